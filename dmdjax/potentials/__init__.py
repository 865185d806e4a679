"""Potentials as pure JAX functions of pair distances and species (DESIGN.md §1)."""

from ._base import DENSITY as DENSITY, PAIR as PAIR, Potential as Potential
from ._eam import (
    BUNDLED_POTENTIALS as BUNDLED_POTENTIALS,
    EAM as EAM,
    eam_from_tables as eam_from_tables,
    load_eam as load_eam,
    resolve_potential_path as resolve_potential_path,
)
from ._pair import (
    HarmonicBond as HarmonicBond,
    LennardJones as LennardJones,
    Morse as Morse,
    PairPotential as PairPotential,
    TabulatedPair as TabulatedPair,
    pair_parameter as pair_parameter,
    smooth_switch as smooth_switch,
)
from ._spline import UniformCubicSpline as UniformCubicSpline
