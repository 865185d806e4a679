"""dmdjax: differentiable diffusive molecular dynamics in JAX.

Metal units (eV, Å, K). See README.md for the public API and docs/design.md for the equations.
"""

from . import (cell, dmd, domain, state, energy, ensemble, free_energy, io, kinetics, neighbors, pair_sums, potentials,
               progress, quadrature, spin_diffusion, systems, units)
from .cell import Cell, make_cell
from .energy import evaluate, forces, potential_energy, site_energies, stress
from .free_energy import VGFreeEnergy
from .neighbors import NeighborList, neighbor_list
from .potentials import EAM, HarmonicBond, LennardJones, Morse, TabulatedPair, load_eam
from .relax import RelaxationError, RelaxResult, initial_stiffness, relax, relax_cell, relax_stiffness
from .state import DMDState
from .systems import System, from_ase, make_system, to_ase
from .units import BOLTZMANN_EV_PER_K, beta_from_temperature

__version__ = "0.1.0"

__all__ = [
    "BOLTZMANN_EV_PER_K", "Cell", "DMDState", "dmd", "EAM", "HarmonicBond", "LennardJones", "Morse", "NeighborList", "RelaxationError",
    "RelaxResult",
    "System", "TabulatedPair", "VGFreeEnergy", "beta_from_temperature", "cell", "energy", "ensemble", "evaluate", "forces",
    "free_energy", "from_ase", "initial_stiffness", "io", "kinetics", "load_eam", "make_cell", "make_system",
    "neighbor_list", "neighbors", "potential_energy", "potentials", "progress", "relax", "relax_cell", "relax_stiffness", "site_energies", "spin_diffusion", "state", "stress", "systems",
    "to_ase", "units",
]
