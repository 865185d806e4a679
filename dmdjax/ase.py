"""ASE calculators: dmdjax's potential energy and its VG free energy inside ASE's workflows.

``atoms.calc = EAMCalculator("AlMg_Mendelev2009")`` gives ASE the energy, forces, stress and
per-atom energies of :func:`dmdjax.evaluate`; ``atoms.calc = FreeEnergyCalculator(potential,
temperature)`` gives the VG free energy F (DESIGN.md §2, eq. F1) of the mean positions as
ASE's energy, with k (and, given an exchange potential, s) relaxed at those positions
(:func:`dmdjax.relax.relax_stiffness`), −∂F/∂X as forces and σ_F = (1/V) ∂F/∂ε as stress —
so ``ase.optimize.BFGS`` relaxes the mean positions at temperature and
``ase.filters.FrechetCellFilter`` finds the cell of zero free-energy pressure.

Cells narrower than twice the interaction range (a 4-atom or primitive fcc cell) are
replicated internally (:func:`dmdjax.systems.replicate`) and the results folded back (energy
per copy, the first copy's forces). Enable double precision (``jax.config.update(
"jax_enable_x64", True)``) before optimising or comparing with finite differences: float32
forces carry ~10⁻⁶ relative noise, ASE's finite differences need better.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .energy import evaluate, full_to_voigt
from .free_energy import VGFreeEnergy
from .potentials import Potential, load_eam
from .neighbors import neighbor_list, refresh
from .relax import relax_stiffness
from .state import DMDState
from .systems import from_ase, replicas_needed, replicate

__all__ = ["EAMCalculator", "FreeEnergyCalculator"]


def _potential(potential) -> Potential:
    return load_eam(potential) if isinstance(potential, (str, bytes)) or hasattr(potential, "__fspath__") else potential


class _ListCache:
    """The neighbour list of the previous call, updated (no new search, no recompilation) while
    the atoms and cell are the same and its cut-off is the one wanted."""

    _neighbors = _cell = None

    def _neighbor_list(self, system, cutoff: float, skin: float):
        previous = self._neighbors
        if (previous is not None and previous.idx.shape[0] == system.n_atoms and previous.cutoff == cutoff
                and np.array_equal(self._cell, np.asarray(system.cell.vectors))):
            return refresh(previous, system.positions, system.cell)
        self._cell = np.asarray(system.cell.vectors)
        return neighbor_list(system.positions, system.cell, cutoff, skin=skin)


class EAMCalculator(_ListCache, Calculator):
    """Potential energy (eV), forces (eV/Å), stress (eV/Å³, periodic 3-D cells) and per-atom
    energies of a dmdjax potential (:func:`dmdjax.evaluate`).

    Arguments:
        potential: a :class:`~dmdjax.potentials.Potential`, a bundled potential name or an EAM file.
        skin: neighbour-list skin, Å; the list is kept between calls (molecular dynamics) and
            searched again only when an atom moved more than skin/2 or the cell changed.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, potential, *, skin: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.potential = _potential(potential)
        self.skin = float(skin)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        system = from_ase(self.atoms, species_names=self.potential.species)
        repeats = replicas_needed(system.cell, self.potential.cutoff + self.skin)
        big = replicate(system, repeats)
        self._neighbors = self._neighbor_list(big, self.potential.cutoff, self.skin)
        result = evaluate(self.potential, big, self._neighbors)
        n, copies = system.n_atoms, int(np.prod(repeats))
        energy = float(result.energy) / copies
        self.results = {"energy": energy, "free_energy": energy, "forces": np.asarray(result.forces, float)[:n],
                        "energies": np.asarray(result.site_energies, float)[:n]}
        if result.stress is not None:
            self.results["stress"] = np.asarray(result.stress, float)


class FreeEnergyCalculator(_ListCache, Calculator):
    """The VG free energy F(X, k*, s) of the atoms' positions taken as the mean positions X, at
    ``temperature``: ASE's energy is F (eV), forces −∂F/∂X (eV/Å), stress σ_F (eV/Å³, periodic
    3-D cells), ``energies`` the site free energies.

    Species: each atom's symbol sets s = +1 (the first of ``species``) or −1 (the second);
    an ``order_parameter`` per-atom array on the atoms (s in [−1, 1]) takes precedence. With
    ``exchange_potential`` Δμ (eV) s is relaxed too, at that Δμ (semi-grand-canonical: μ_i = Δμ
    on every site), starting from the atoms' s; ``self.order_parameter`` holds the result.

    Arguments:
        potential: a potential, a bundled name or an EAM file.
        temperature: K, > 0.
        species: the s = +1 and s = −1 species names (default the potential's first two).
        exchange_potential: None (s fixed) or Δμ in eV.
        quadrature, nodes: the pair-average rule (:class:`~dmdjax.VGFreeEnergy`).
        tolerance: of the k (and s) relaxation; default :func:`dmdjax.relax.default_tolerance`.
        skin: neighbour-list skin, Å.
        reach: Å of room for the Gaussians beyond the cut-off when a small cell is replicated
            (default 2 Å; 0.6–0.9 Å for Al at 600 K); a cell that proves too small is
            replicated further.

    k is warm-started from the previous call while the number of atoms is unchanged.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, potential, temperature, *, species=None, exchange_potential=None,
                 quadrature: str = "gauss-hermite", nodes: int = 8, tolerance: float | None = None,
                 skin: float = 0.5, reach: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.potential = _potential(potential)
        self.temperature = float(temperature)
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0 K; got {temperature!r}")
        self.species = tuple(species) if species is not None else (
            self.potential.species[:2] if self.potential.n_species > 1 else self.potential.species * 2)
        for name in self.species:
            self.potential.species_index(name)  # raises for a species the potential lacks
        self.exchange_potential = None if exchange_potential is None else float(exchange_potential)
        self.quadrature, self.nodes = quadrature, int(nodes)
        self.tolerance, self.skin, self.reach = tolerance, float(skin), float(reach)
        if not (np.isfinite(self.reach) and self.reach >= 0):
            raise ValueError(f"reach must be finite and >= 0 Å; got {reach!r}")
        self.order_parameter = None
        self._stiffness = None

    def _order_parameter(self, atoms) -> np.ndarray:
        if "order_parameter" in atoms.arrays:
            s = np.asarray(atoms.arrays["order_parameter"], float)
            if s.shape != (len(atoms),) or not np.all(np.abs(s) <= 1):
                raise ValueError(f"atoms.arrays['order_parameter'] must be ({len(atoms)},) values in [-1, 1]")
            return s
        symbols = np.asarray(atoms.get_chemical_symbols())
        unknown = sorted(set(symbols) - set(self.species))
        if unknown:
            raise ValueError(f"atoms hold {unknown}, not one of the calculator's species {list(self.species)}")
        return np.where(symbols == self.species[0], 1.0, -1.0)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        system = from_ase(atoms, species_names=self.potential.species)
        n = system.n_atoms
        dtype = system.positions.dtype
        s = np.asarray(self._order_parameter(atoms), dtype)
        if self.exchange_potential is not None:  # s relaxes from inside (−1, 1)
            s = np.clip(s, -0.99, 0.99)
        reach = self.reach
        for _ in range(4):
            # The list's cut-off is fixed (cut-off + reach): one compilation serves every call.
            cutoff = self.potential.cutoff + reach
            repeats = replicas_needed(system.cell, cutoff)
            copies = int(np.prod(repeats))
            big = replicate(system, repeats)
            vg = VGFreeEnergy(self.potential, big.cell, self.temperature, big.n_atoms, species=self.species,
                              pinned_species=np.full(big.n_atoms, self.exchange_potential is None),
                              quadrature=self.quadrature, nodes=self.nodes)
            neighbors = self._neighbor_list(big, cutoff, self.skin)
            order_parameter = np.tile(s, copies).astype(dtype)
            if self._stiffness is not None and self._stiffness.shape[0] == n:
                stiffness = np.tile(self._stiffness, copies).astype(dtype)
            else:
                stiffness = vg.initial_stiffness(big.positions, jnp.asarray(order_parameter), neighbors)
            needed = float(vg.interaction_range(stiffness)) - self.potential.cutoff
            if needed <= reach:
                break
            # The Gaussians reach further: replicate more (reach rounded up to 1/8 Å, so that nearby
            # needs share one list cut-off and one compilation).
            reach, self._neighbors = np.ceil(1.25 * needed * 8.0) / 8.0, None
        state = DMDState(big.positions, np.asarray(stiffness, dtype), order_parameter)
        result = relax_stiffness(vg, state, neighbors, exchange_potential=self.exchange_potential,
                                 tolerance=self.tolerance)
        state, neighbors = result.state, result.neighbors
        self._neighbors = neighbors
        free_energy, gradient, stress, site = _free_energy_forces_stress(vg, state, neighbors)
        self._stiffness = np.asarray(state.stiffness)[:n]
        self.order_parameter = np.asarray(state.order_parameter)[:n]
        self.results = {"energy": float(free_energy) / copies, "free_energy": float(free_energy) / copies,
                        "forces": -np.asarray(gradient, float)[:n], "energies": np.asarray(site, float)[:n]}
        if stress is not None:
            self.results["stress"] = np.asarray(stress, float)


@eqx.filter_jit
def _free_energy_forces_stress(vg: VGFreeEnergy, state: DMDState, neighbors):
    free_energy, gradient = jax.value_and_grad(lambda x: vg(DMDState(x, state.stiffness, state.order_parameter),
                                                            neighbors))(state.positions)
    site = vg.site_free_energies(state, neighbors)
    stress = None
    if vg.cell.fully_periodic and vg.cell.dim == 3:
        sigma = vg.stress(state, neighbors)
        stress = full_to_voigt(sigma)
    return free_energy, gradient, stress, site
