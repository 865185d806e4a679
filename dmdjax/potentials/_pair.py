"""Pair potentials φ_ab(r) for any number of species, as pure JAX functions.

Every parameter is an ``(S, S)`` symmetric array (a pytree leaf, so parameters can be
differentiated and fitted). Constructors accept a scalar (same for all pairs), an
``(S, S)`` array, or a mapping ``{("A", "B"): value, ...}`` that must name every
unordered pair of species.

Cut-off modes (``cutoff_mode``):

* ``"hard"``: φ(r) for r < r_c, 0 beyond (discontinuous at r_c);
* ``"shift"``: φ(r) − φ(r_c) for r < r_c (continuous energy);
* ``"smooth"``: φ(r)·S(r) with jax-md's C¹ switch S (``multiplicative_isotropic_cutoff``,
  from HOOMD-blue): S = 1 below ``onset``, S = 0 beyond r_c. The default for
  Lennard-Jones and Morse, so their energies match jax-md's for the same parameters.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import _validate
from ._base import Potential
from ._spline import UniformCubicSpline

_CUTOFF_MODES = ("hard", "shift", "smooth")


def pair_parameter(value, species: Sequence[str], name: str) -> Array:
    """Resolve a per-pair parameter into a symmetric ``(S, S)`` array.

    Raises:
        ValueError: for a missing pair entry, an unknown species name, a wrong shape,
            an asymmetric matrix or a non-finite value.
    """
    species = tuple(species)
    n = len(species)
    if isinstance(value, Mapping):
        table = np.full((n, n), np.nan)
        for key, v in value.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise ValueError(f"{name}: keys must be pairs of species names; got {key!r}")
            for s in key:
                if s not in species:
                    raise ValueError(f"{name}: unknown species {s!r} in pair {key!r} (species {list(species)})")
            a, b = species.index(key[0]), species.index(key[1])
            table[a, b] = table[b, a] = float(v)
        for a in range(n):
            for b in range(a, n):
                if np.isnan(table[a, b]):
                    raise ValueError(f"{name}: missing pair entry ({species[a]!r}, {species[b]!r})")
        array = table
    elif not _validate.is_concrete(value):
        # Traced parameters (built inside grad/vmap): shape checks only.
        array = jnp.asarray(value)
        if array.ndim == 0:
            return jnp.full((n, n), array)
        if array.shape != (n, n):
            raise ValueError(f"{name} must be a scalar or have shape ({n}, {n}); got shape {array.shape}")
        return array
    else:
        array = np.asarray(value, dtype=float)
        if array.ndim == 0:
            array = np.full((n, n), float(array))
        if array.shape != (n, n):
            raise ValueError(f"{name} must be a scalar or have shape ({n}, {n}) for species {list(species)}; "
                             f"got shape {array.shape}")
        if not np.allclose(array, array.T):
            raise ValueError(f"{name} must be symmetric (φ_ab = φ_ba); got {array.tolist()}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite; got {array.tolist()}")
    return jnp.asarray(array)


def smooth_switch(r: Array, onset: float, cutoff: float) -> Array:
    """jax-md's C¹ multiplicative switch: 1 below ``onset``, 0 beyond ``cutoff``."""
    rc2, ro2, r2 = cutoff**2, onset**2, r * r
    inner = (rc2 - r2) ** 2 * (rc2 + 2 * r2 - 3 * ro2) / (rc2 - ro2) ** 3
    return jnp.where(r < onset, 1.0, jnp.where(r < cutoff, inner, 0.0))


class PairPotential(Potential):
    """Base for analytic pair potentials: subclasses add parameter fields and :meth:`pair_energy`.

    Attributes:
        species: species names (static).
        cutoff: r_c, Å. cutoff_mode: ``"hard"``, ``"shift"`` or ``"smooth"``. onset: start of the
            smooth switch, Å.
    """

    species: tuple[str, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    cutoff_mode: str = eqx.field(static=True)
    onset: float = eqx.field(static=True)

    def pair_energy(self, r: Float[Array, "... 1 1 1"]) -> Float[Array, "... 1 s s"]:
        """The untruncated φ_ab(r); ``r`` arrives with three trailing unit axes."""
        raise NotImplementedError

    def radial(self, r: Float[Array, "..."]) -> Float[Array, "... 1 s s"]:
        rr = r[..., None, None, None]
        phi = self.pair_energy(rr)
        inside = rr < self.cutoff
        if self.cutoff_mode == "smooth":
            phi = phi * smooth_switch(rr, self.onset, self.cutoff)
        elif self.cutoff_mode == "shift":
            phi = phi - self.pair_energy(jnp.full_like(rr, self.cutoff))
        return jnp.where(inside, phi, 0.0)


def _check_cutoff(cutoff: float, cutoff_mode: str, onset: float | None) -> tuple[float, float]:
    if cutoff_mode not in _CUTOFF_MODES:
        raise ValueError(f"cutoff_mode must be one of {_CUTOFF_MODES}; got {cutoff_mode!r}")
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be finite and > 0 Å; got {cutoff!r}")
    onset = float(cutoff if onset is None else onset)
    if cutoff_mode == "smooth" and not 0 < onset < cutoff:
        raise ValueError(f"smooth cut-off needs 0 < onset < cutoff; got onset={onset}, cutoff={cutoff}")
    return float(cutoff), onset


class LennardJones(PairPotential):
    """φ_ab(r) = 4 ε_ab [(σ_ab/r)¹² − (σ_ab/r)⁶] (eV, Å).

    Defaults follow jax-md's ``lennard_jones_pair``: cut-off 2.5 max σ, smooth switch
    from 0.8 × cut-off (= 2.0 max σ).
    """

    epsilon: Float[Array, "s s"]
    sigma: Float[Array, "s s"]

    def __init__(self, epsilon=1.0, sigma=1.0, *, species: Sequence[str] = ("A",), cutoff: float | None = None,
                 cutoff_mode: str = "smooth", onset: float | None = None):
        self.species = tuple(species)
        self.epsilon = pair_parameter(epsilon, self.species, "epsilon")
        self.sigma = pair_parameter(sigma, self.species, "sigma")
        if _validate.is_concrete(self.sigma) and np.any(np.asarray(self.sigma) <= 0):
            raise ValueError(f"sigma must be > 0; got {np.asarray(self.sigma).tolist()}")
        if cutoff is None:
            if not _validate.is_concrete(self.sigma):
                raise ValueError("give an explicit cutoff when sigma is traced")
            cutoff = 2.5 * float(np.max(self.sigma))
        if onset is None and cutoff_mode == "smooth":
            onset = 0.8 * cutoff
        self.cutoff, self.onset = _check_cutoff(cutoff, cutoff_mode, onset)
        self.cutoff_mode = cutoff_mode

    def pair_energy(self, r):
        x6 = (self.sigma.astype(r.dtype) / r) ** 6
        return 4.0 * self.epsilon.astype(r.dtype) * (x6 * x6 - x6)


class Morse(PairPotential):
    """φ_ab(r) = D_ab [(1 − e^{−α_ab (r − r0_ab)})² − 1] (eV, Å); minimum −D_ab at r0_ab.

    Smooth cut-off onset defaults to 0.8 × cut-off (jax-md's 2.0 of 2.5).
    """

    well_depth: Float[Array, "s s"]
    alpha: Float[Array, "s s"]
    r0: Float[Array, "s s"]

    def __init__(self, well_depth=1.0, alpha=5.0, r0=1.0, *, species: Sequence[str] = ("A",), cutoff: float = 2.5,
                 cutoff_mode: str = "smooth", onset: float | None = None):
        self.species = tuple(species)
        self.well_depth = pair_parameter(well_depth, self.species, "well_depth")
        self.alpha = pair_parameter(alpha, self.species, "alpha")
        self.r0 = pair_parameter(r0, self.species, "r0")
        if onset is None and cutoff_mode == "smooth":
            onset = 0.8 * cutoff
        self.cutoff, self.onset = _check_cutoff(cutoff, cutoff_mode, onset)
        self.cutoff_mode = cutoff_mode

    def pair_energy(self, r):
        e = 1.0 - jnp.exp(-self.alpha.astype(r.dtype) * (r - self.r0.astype(r.dtype)))
        return self.well_depth.astype(r.dtype) * (e * e - 1.0)


class HarmonicBond(PairPotential):
    """φ_ab(r) = ½ κ_ab (r − r0_ab)² (eV, Å) for pairs closer than ``cutoff``.

    With a cut-off between first and second neighbours this is a harmonic spring
    network (jax-md's ``simple_spring`` with α = 2). ``spring_constant`` κ is in eV/Å².
    """

    spring_constant: Float[Array, "s s"]
    r0: Float[Array, "s s"]

    def __init__(self, spring_constant=1.0, r0=1.0, *, species: Sequence[str] = ("A",), cutoff: float = 1.5,
                 cutoff_mode: str = "hard", onset: float | None = None):
        self.species = tuple(species)
        self.spring_constant = pair_parameter(spring_constant, self.species, "spring_constant")
        self.r0 = pair_parameter(r0, self.species, "r0")
        self.cutoff, self.onset = _check_cutoff(cutoff, cutoff_mode, onset)
        self.cutoff_mode = cutoff_mode

    def pair_energy(self, r):
        return 0.5 * self.spring_constant.astype(r.dtype) * (r - self.r0.astype(r.dtype)) ** 2


class TabulatedPair(Potential):
    """φ_ab(r) interpolated by cubic splines on a uniform grid ``r_k = r_min + k dr``.

    Zero at and beyond ``cutoff`` (the last grid point by default). Below the grid the
    first cubic is extrapolated.
    """

    spline: UniformCubicSpline
    species: tuple[str, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)

    def __init__(self, r_min: float, dr: float, values, *, species: Sequence[str] = ("A",),
                 cutoff: float | None = None):
        """``values``: ``(n_points, S, S)`` (or ``(n_points,)`` for one species), eV."""
        self.species = tuple(species)
        n = len(self.species)
        v = np.asarray(values, dtype=float)
        if v.ndim == 1:
            v = v[:, None, None] * np.ones((1, n, n))
        if v.ndim != 3 or v.shape[1:] != (n, n):
            raise ValueError(f"tabulated values must have shape (n_points, {n}, {n}); got {v.shape}")
        if not np.allclose(v, np.swapaxes(v, 1, 2)):
            raise ValueError("tabulated values must be symmetric in the species pair")
        if not np.all(np.isfinite(v)):
            raise ValueError("tabulated values must be finite")
        if not dr > 0:
            raise ValueError(f"dr must be > 0; got {dr}")
        self.spline = UniformCubicSpline.fit(r_min, dr, v)
        r_end = r_min + dr * (v.shape[0] - 1)
        self.cutoff, _ = _check_cutoff(r_end if cutoff is None else cutoff, "hard", None)

    def radial(self, r):
        phi = self.spline(r)[..., None, :, :]
        return jnp.where((r < self.cutoff)[..., None, None, None], phi, 0.0)
