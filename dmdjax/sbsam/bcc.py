r"""SB-SAM in 3-D: a periodic bcc crystal with an EAM potential, around a vacancy (DESIGN.md §7).

The full system is a cube of ``repeats``³ conventional bcc cells (lattice constant a₀ at 0 K) with
periodic boundaries, optionally with the atom at the centre site removed (a vacancy). Positions
are x_i = F ξ_i + u_i: ξ the 0-K sites (Å), F the *total* deformation (:func:`total_deformation`:
the condition's deformation gradient times the thermal expansion a(T)/a₀), u the displacements.
The EAM energy (DESIGN.md §1)

    V(u; F) = Σ_⟨ij⟩ φ(r_ij) + Σ_i E(ρ_i),   ρ_i = Σ_j f(r_ij),   r_ij = |F ξ_ij + u_j − u_i|,

runs over a pair list fixed at the reference sites (every pair closer than cut-off + ``skin``;
in the solid no other pair comes within the cut-off, which :func:`sample_full` checks).

Regions, around the centre c (the vacancy site):

* the **core** C: the atoms within ``core_radius`` of c (the vacancy's first neighbour shell; in
  the perfect crystal the centre atom and its first shell) — where the stress is measured;
* the **inner** region X: the core and every atom that shares a listed pair with a core atom (the
  closure; or the atoms within ``inner_radius``), so the core's local stress is a function of X
  alone — the observable an inner-only sampler can compute (:meth:`BccCrystal.core_stress`);
* the outer atoms Y: the rest.

The physics reference score of X (:meth:`BccCrystal.reference_score`) is the EAM force on X with Y
held at its relaxed (0-K) positions at that F, softened by the exact harmonic response of Y:
S_ref(u_X) = −β[∇_X V(u_X, u⁰_Y) − W(u_X − u⁰_X)], W = H_XY H_YY⁻¹ H_YX the Schur complement of the
EAM Hessian at the relaxed configuration (:meth:`BccCrystal.schur_softening`). Its linearisation
about u⁰ is −β(H_XX − W), the precision of the exact marginal of X in the harmonic approximation.

Units: Å, eV, K, amu; time √(amu Å²/eV) ≈ 10.18 fs.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..potentials import EAM
from ..units import beta_from_temperature, temperature_from_thermal_energy, thermal_energy
from .crystal import baoab_batches, energy_drift_z, integrated_autocorrelation_time


def cubic_group() -> np.ndarray:
    """The 48 elements of the cubic point group Oh as 3 × 3 signed permutation matrices, identity first."""
    import itertools

    elements = []
    for permutation in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            g = np.zeros((3, 3))
            g[np.arange(3), permutation] = signs
            elements.append(g)
    elements.sort(key=lambda g: not np.allclose(g, np.eye(3)))
    return np.stack(elements)


def total_deformation(deformation, temperature, expansion) -> Float[Array, "3 3"]:
    """F_total = F · a(T)/a₀: the condition's F is the deformation of the crystal *at* T, stress-free
    at F = I; ``expansion`` a callable T → a(T)/a₀ (:func:`thermal_expansion`), or a number."""
    scale = expansion(temperature) if callable(expansion) else expansion
    return jnp.asarray(deformation) * scale


@dataclasses.dataclass(frozen=True, eq=False)
class BccCrystal:
    """A periodic bcc crystal of ``repeats``³ cubic cells with the EAM ``potential`` (one species).

    Attributes:
        potential: a one-species :class:`~dmdjax.potentials.EAM` (e.g. ``load_eam("Fe_Mendelev2003")``).
        repeats: cells per side (7: 686 sites). lattice_constant: a₀ at 0 K, Å.
        vacancy: remove the atom at the centre site.
        core_radius: the core C is within it of the centre, Å (2.6: the first shell).
        inner_radius: X within it of the centre, Å; None: the closure of the core's pairs.
        skin: added to the cut-off for the fixed pair list, Å. mass: amu.
    """

    potential: EAM
    repeats: int = 7
    lattice_constant: float = 2.8553
    vacancy: bool = True
    core_radius: float = 2.6
    inner_radius: float | None = None
    skin: float = 0.7
    mass: float = 55.845

    def __post_init__(self):
        if self.potential.n_species != 1:
            raise ValueError(f"BccCrystal needs a one-species EAM; got species {self.potential.species}")
        if int(self.repeats) < 3:
            raise ValueError(f"repeats must be >= 3; got {self.repeats!r}")
        if not (self.lattice_constant > 0 and self.core_radius > 0 and self.skin >= 0):
            raise ValueError("lattice_constant and core_radius must be > 0 and skin >= 0 (Å)")
        if self.box_length < 2.0 * (self.potential.cutoff + self.skin):
            raise ValueError(f"the box ({self.box_length:.2f} Å) must be at least twice the pair range "
                             f"({self.potential.cutoff + self.skin:.2f} Å): increase repeats")
        if self.inner.size == 0 or self.core.size == 0:
            raise ValueError("empty core or inner region: increase core_radius / inner_radius")

    # --- geometry -------------------------------------------------------------------------------
    @property
    def box_length(self) -> float:
        return float(self.repeats * self.lattice_constant)

    @functools.cached_property
    def _all_sites(self) -> np.ndarray:
        n = int(self.repeats)
        cells = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
        return np.concatenate([cells, cells + 0.5]) * self.lattice_constant

    @functools.cached_property
    def centre(self) -> np.ndarray:
        """The centre site c (the vacancy), Å."""
        return np.full(3, (int(self.repeats) // 2) * self.lattice_constant)

    def minimum_image(self, vectors):
        """``vectors`` (..., 3) Å wrapped into the periodic cube (nearest image)."""
        return vectors - self.box_length * np.round(vectors / self.box_length)

    @functools.cached_property
    def sites(self) -> np.ndarray:
        """The 0-K sites ξ (n, 3), Å (the centre site removed for a vacancy)."""
        distance = np.linalg.norm(self.minimum_image(self._all_sites - self.centre), axis=1)
        return self._all_sites[distance > 1e-6] if self.vacancy else self._all_sites

    @property
    def n_atoms(self) -> int:
        return self.sites.shape[0]

    @functools.cached_property
    def centre_distance(self) -> np.ndarray:
        return np.linalg.norm(self.minimum_image(self.sites - self.centre), axis=1)

    @functools.cached_property
    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed pair list: ``(P, 2)`` indices i < j and reference vectors ξ_j − ξ_i ``(P, 3)`` (Å,
        minimum image), every pair within cut-off + skin."""
        vectors = self.minimum_image(self.sites[None, :, :] - self.sites[:, None, :])
        distance = np.linalg.norm(vectors, axis=-1)
        i, j = np.nonzero(np.triu(distance < self.potential.cutoff + self.skin, k=1))
        return np.stack([i, j], axis=1), vectors[i, j]

    @functools.cached_property
    def core(self) -> np.ndarray:
        """Indices of the core atoms C (within ``core_radius`` of the centre)."""
        return np.flatnonzero(self.centre_distance < self.core_radius)

    @functools.cached_property
    def inner(self) -> np.ndarray:
        """Indices of the inner atoms X, nearest the centre first (the core first)."""
        if self.inner_radius is None:
            pairs, _ = self.pairs
            touching = np.isin(pairs, self.core).any(axis=1)
            members = np.union1d(self.core, pairs[touching].reshape(-1))
        else:
            members = np.flatnonzero(self.centre_distance < self.inner_radius)
        return members[np.argsort(self.centre_distance[members], kind="stable")]

    @property
    def n_inner(self) -> int:
        return self.inner.size

    @functools.cached_property
    def outer(self) -> np.ndarray:
        mask = np.ones(self.n_atoms, bool)
        mask[self.inner] = False
        return np.flatnonzero(mask)

    @functools.cached_property
    def core_is_closed(self) -> bool:
        """Every listed pair of a core atom lies inside X (the core stress is the exact local one)."""
        pairs, _ = self.pairs
        touching = np.isin(pairs, self.core).any(axis=1)
        return bool(np.isin(pairs[touching], self.inner).all())

    @functools.cached_property
    def inner_symmetries(self) -> tuple:
        """The elements g of Oh with their permutations π of the inner atoms, g(ξ_i − c) = ξ_π(i) − c
        (inner order), identity first: ``((g, π), ...)`` as nested tuples. The region is symmetric
        about the centre site, so all 48 are found."""
        local = self.minimum_image(self.sites[self.inner] - self.centre)
        found = []
        for g in cubic_group():
            match = np.linalg.norm((local @ g.T)[:, None, :] - local[None, :, :], axis=-1)
            if np.all(match.min(axis=1) < 1e-6):
                found.append((tuple(map(tuple, g.tolist())), tuple(int(i) for i in match.argmin(axis=1))))
        return tuple(found)

    # --- energies -------------------------------------------------------------------------------
    def _pair_functions(self, length):
        """φ(r) and f(r) (each the shape of ``length``), through the EAM's per-pair spline gather."""
        zero = jnp.zeros(length.shape, jnp.int32)
        values, _ = self.potential.species_radial(length, zero, zero)
        return values[..., 0], values[..., 1]

    def _embedding(self, density):
        return self.potential.embedding(density[..., None])[..., 0]

    def bond_vectors(self, displacement: Float[Array, "n 3"], deformation) -> Float[Array, "P 3"]:
        """d_ij = F ξ_ij + u_j − u_i for every listed pair, Å."""
        pairs, vectors = self.pairs
        return (jnp.asarray(vectors, displacement.dtype) @ jnp.asarray(deformation, displacement.dtype).T
                + displacement[pairs[:, 1]] - displacement[pairs[:, 0]])

    def energy(self, displacement: Float[Array, "n 3"], deformation) -> Float[Array, ""]:
        """V(u; F), eV, for displacements u (n, 3) Å of every atom and the total deformation F."""
        return self._bond_energy(self.bond_vectors(displacement, deformation))

    def _bond_energy(self, bond):
        """V as a function of every listed bond vector ``(P, 3)``."""
        pairs, _ = self.pairs
        pair, density = self._pair_functions(jnp.linalg.norm(bond, axis=-1))
        rho = (jax.ops.segment_sum(density, pairs[:, 0], self.n_atoms)
               + jax.ops.segment_sum(density, pairs[:, 1], self.n_atoms))
        return jnp.sum(pair) + jnp.sum(self._embedding(rho))

    @functools.cached_property
    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """The pair list as neighbour rows: ``(n, K)`` indices (an atom's own index as padding) and
        reference vectors ξ_k − ξ_i ``(n, K, 3)`` (padding far beyond the cut-off)."""
        pairs, vectors = self.pairs
        heads = np.concatenate([pairs[:, 0], pairs[:, 1]])
        tails = np.concatenate([pairs[:, 1], pairs[:, 0]])
        vectors = np.concatenate([vectors, -vectors])
        order = np.argsort(heads, kind="stable")
        counts = np.bincount(heads, minlength=self.n_atoms)
        width = int(counts.max())
        slot = np.arange(heads.size) - np.repeat(np.cumsum(counts) - counts, counts)
        index = np.repeat(np.arange(self.n_atoms)[:, None], width, axis=1)
        far = np.zeros((self.n_atoms, width, 3))
        far[..., 0] = 10.0 * (self.potential.cutoff + self.skin)
        index[heads[order], slot] = tails[order]
        far[heads[order], slot] = vectors[order]
        return index, far

    def _embedding_derivative(self, density):
        _, slope = self.potential.embedding_spline.value_and_derivative(density)
        return slope[..., 0]

    def _row_terms(self, bond):
        """(f, φ'(r)/r, f'(r)/r) of bond vectors ``(..., 3)``."""
        length = jnp.linalg.norm(bond, axis=-1)
        zero = jnp.zeros(length.shape, jnp.int32)
        values, slopes = self.potential.species_radial(length, zero, zero)
        inverse = 1.0 / jnp.maximum(length, 1e-6)
        return values[..., 1], slopes[..., 0] * inverse, slopes[..., 1] * inverse

    def forces(self, displacement: Float[Array, "n 3"], deformation) -> Float[Array, "n 3"]:
        """−∇_u V, eV/Å, from the neighbour :attr:`rows` (gathers only, no scatter: the hot path of
        :func:`sample_full`): F_i = Σ_k [φ'(r) + (E'(ρ_i) + E'(ρ_k)) f'(r)] d_ik/r_ik."""
        index, vectors = self.rows
        deformation = jnp.asarray(deformation, displacement.dtype)
        bond = jnp.asarray(vectors, displacement.dtype) @ deformation.T + displacement[index] - displacement[:, None]
        density, pair_slope, density_slope = self._row_terms(bond)
        embedding = self._embedding_derivative(jnp.sum(density, axis=1))
        coefficient = pair_slope + (embedding[:, None] + embedding[index]) * density_slope
        return jnp.einsum("ik,ikj->ij", coefficient, bond)

    def stress(self, displacement: Float[Array, "n 3"], deformation, temperature) -> Float[Array, "3 3"]:
        """The periodic first Piola–Kirchhoff stress of one configuration,
        P = (1/V₀)[Σ_b ∂V/∂d_b ⊗ F⁻¹d_b − N k_BT F⁻ᵀ] (V₀ the 0-K volume), eV/Å³."""
        deformation = jnp.asarray(deformation, displacement.dtype)
        bond = self.bond_vectors(displacement, deformation)
        return self._virial_stress(jax.grad(self._bond_energy)(bond), bond, deformation, temperature,
                                   self.n_atoms)

    def _virial_stress(self, bond_force, bond, deformation, temperature, atoms):
        inverse = jnp.linalg.inv(deformation)
        virial = jnp.einsum("bi,bj->ij", bond_force, bond @ inverse.T)
        volume = atoms * self.lattice_constant**3 / 2.0
        return (virial - atoms * thermal_energy(temperature) * inverse.T) / volume

    # --- the core's local stress (a function of X alone) -----------------------------------------
    @functools.cached_property
    def _core_pairs(self):
        """Pairs with a core atom, both atoms inside X: (pairs (b, 2) as inner positions, vectors)."""
        pairs, vectors = self.pairs
        position = np.full(self.n_atoms, -1)
        position[self.inner] = np.arange(self.n_inner)
        local = position[pairs]
        keep = np.isin(pairs, self.core).any(axis=1) & (local >= 0).all(axis=1)
        return local[keep], vectors[keep]

    def core_stress(self, inner: Float[Array, "m 3"], deformation, temperature) -> Float[Array, "3 3"]:
        r"""The local first Piola–Kirchhoff stress of the core, eV/Å³, from the inner displacements alone:
        with per-atom energies E_i = ½Σ_j φ(r_ij) + E(ρ_i) (Σ_i E_i = V), ρ_i over the neighbours in X,

            P_C = (1/(n_C Ω₀)) [Σ_{i∈C} Σ_b ∂E_i/∂d_b ⊗ F⁻¹ d_b − n_C k_BT F⁻ᵀ],   Ω₀ = a₀³/2,

        the per-atom (Hardy with a uniform kernel over C) stress; summed over every atom of the periodic
        crystal it is :meth:`stress`. With :attr:`core_is_closed` every neighbour of the core is in X,
        so it is the exact local stress (DESIGN.md §7: support inside Ω_I)."""
        deformation = jnp.asarray(deformation, inner.dtype)
        local, vectors = self._core_pairs
        bond = jnp.asarray(vectors, inner.dtype) @ deformation.T + inner[local[:, 1]] - inner[local[:, 0]]
        core_slot = np.full(self.n_inner, -1)
        core_slot[self.core_positions] = np.arange(self.core.size)
        owner = core_slot[local]  # (b, 2): core index of each end, −1 if not core

        def core_energy(b):
            pair, density = self._pair_functions(jnp.linalg.norm(b, axis=-1))
            total = 0.0
            rho = jnp.zeros(self.core.size, b.dtype)
            for end in (0, 1):
                mine = owner[:, end] >= 0
                total = total + 0.5 * jnp.sum(jnp.where(mine, pair, 0.0))
                rho = rho + jax.ops.segment_sum(jnp.where(mine, density, 0.0), np.maximum(owner[:, end], 0),
                                                self.core.size)
            return total + jnp.sum(self._embedding(rho))

        return self._virial_stress(jax.grad(core_energy)(bond), bond, deformation, temperature, self.core.size)

    @functools.cached_property
    def core_positions(self) -> np.ndarray:
        """The core atoms' positions in :attr:`inner` order."""
        position = np.full(self.n_atoms, -1)
        position[self.inner] = np.arange(self.n_inner)
        return position[self.core]

    # --- the inner region with the outer atoms fixed ----------------------------------------------
    @functools.cached_property
    def _local(self):
        """Neighbour rows of X in local indices (X in inner order, then the outer atoms A they reach)
        with their vectors, A's global indices, and A's rows restricted to X (indices into X, vectors;
        padding far beyond the cut-off)."""
        index, vectors = self.rows
        x_index, x_vectors = index[self.inner], vectors[self.inner]
        real = x_index != self.inner[:, None]
        reached = np.setdiff1d(x_index[real], self.inner)
        slot = np.full(self.n_atoms, -1)
        slot[self.inner] = np.arange(self.n_inner)
        slot[reached] = self.n_inner + np.arange(reached.size)
        local = np.where(real, slot[x_index], np.arange(self.n_inner)[:, None])
        a_rows, a_vectors = index[reached], vectors[reached]
        in_x = np.isin(a_rows, self.inner)
        width = int(in_x.sum(axis=1).max())
        a_index = np.zeros((reached.size, width), int)
        a_far = np.zeros((reached.size, width, 3))
        a_far[..., 0] = 10.0 * (self.potential.cutoff + self.skin)
        for row in range(reached.size):
            keep = np.flatnonzero(in_x[row])
            a_index[row, :keep.size] = slot[a_rows[row, keep]]
            a_far[row, :keep.size] = a_vectors[row, keep]
        return local, x_vectors, reached, a_index, a_far

    class Context(NamedTuple):
        """The fixed outer atoms seen by X: ``displacement`` (a, 3) Å of the outer atoms A that share a
        pair with X, and ``background`` (a,) their densities from their pairs with other outer atoms."""

        displacement: jax.Array
        background: jax.Array

    def _outer_density_from_inner(self, inner, outer, deformation):
        """ρ_j of the reached outer atoms from their X neighbours alone ``(a,)``."""
        _, _, _, a_index, a_vectors = self._local
        bond = jnp.asarray(a_vectors, inner.dtype) @ deformation.T + inner[a_index] - outer[:, None]
        return jnp.sum(self._row_terms(bond)[0], axis=1)

    def context(self, displacement: Float[Array, "n 3"], deformation) -> "BccCrystal.Context":
        """The :class:`Context` of the outer atoms at the full displacements ``displacement`` (n, 3)."""
        index, vectors = self.rows
        _, _, reached, _, _ = self._local
        deformation = jnp.asarray(deformation, displacement.dtype)
        bond = (jnp.asarray(vectors[reached], displacement.dtype) @ deformation.T + displacement[index[reached]]
                - displacement[reached][:, None])
        total = jnp.sum(self._row_terms(bond)[0], axis=1)
        outer = displacement[reached]
        return BccCrystal.Context(outer, total - self._outer_density_from_inner(displacement[self.inner], outer,
                                                                                deformation))

    def clamped_forces(self, inner: Float[Array, "m 3"], deformation, context: "BccCrystal.Context"
                       ) -> Float[Array, "m 3"]:
        """−∇_X V, eV/Å, with the outer atoms fixed as in ``context`` (exactly the full forces on X at that
        configuration; only X's rows and the embedding of the outer atoms X reaches are evaluated)."""
        local, x_vectors, _, _, _ = self._local
        deformation = jnp.asarray(deformation, inner.dtype)
        positions = jnp.concatenate([inner, context.displacement])
        bond = jnp.asarray(x_vectors, inner.dtype) @ deformation.T + positions[local] - inner[:, None]
        density, pair_slope, density_slope = self._row_terms(bond)
        outer_density = context.background + self._outer_density_from_inner(inner, context.displacement, deformation)
        embedding = self._embedding_derivative(jnp.concatenate([jnp.sum(density, axis=1), outer_density]))
        coefficient = pair_slope + (embedding[:self.n_inner, None] + embedding[local]) * density_slope
        return jnp.einsum("ik,ikj->ij", coefficient, bond)

    def clamped_score(self, inner: Float[Array, "m 3"], deformation, temperature, context) -> Float[Array, "m 3"]:
        """−β∇_X V with the outer atoms fixed as in ``context``, 1/Å."""
        return beta_from_temperature(temperature) * self.clamped_forces(inner, deformation, context)

    # --- Hessian, relaxation, Schur complement -------------------------------------------------------
    def hessian(self, displacement: Float[Array, "n 3"], deformation, chunk: int = 96) -> Float[Array, "3n 3n"]:
        """∇²_u V at ``displacement``, eV/Å², (atom, x/y/z) order; by forward-over-reverse in chunks of
        ``chunk`` directions (memory bounded)."""
        size = 3 * self.n_atoms
        flat = jnp.reshape(displacement, (-1,))

        def gradient(v):
            return -jnp.reshape(self.forces(jnp.reshape(v, (-1, 3)), deformation), (-1,))

        padded = -(-size // chunk) * chunk
        basis = jnp.eye(size, padded, dtype=flat.dtype).T.reshape(-1, chunk, size)
        columns = jax.lax.map(lambda block: jax.vmap(lambda t: jax.jvp(gradient, (flat,), (t,))[1])(block), basis)
        return columns.reshape(padded, size)[:size]

    def lattice_hessian(self, deformation) -> Float[Array, "3n 3n"]:
        """∇²_u V of the perfect crystal at its deformed sites (u = 0), eV/Å², as :meth:`hessian`, from
        three directional derivatives: bcc is a Bravais lattice, so under a homogeneous F every block
        is a function of the site difference alone, H_ij = K(ξ_i − ξ_j), and K is the column block of
        one atom. The same matrix as :meth:`hessian` at a cost independent of the size (the dense
        matrix itself aside): what makes a 12³-cell crystal's Hessian a second's work, not 10⁴ jvps.

        Raises:
            ValueError: for a crystal with a vacancy (no translation symmetry).
        """
        if self.vacancy:
            raise ValueError("lattice_hessian needs the perfect crystal (vacancy=False): a vacancy breaks the "
                             "translation symmetry; use hessian()")
        n = self.n_atoms
        deformation = jnp.asarray(deformation)
        flat = jnp.zeros(3 * n, deformation.dtype)

        def gradient(v):
            return -jnp.reshape(self.forces(jnp.reshape(v, (n, 3)), deformation), (-1,))

        columns = jax.vmap(lambda t: jax.jvp(gradient, (flat,), (t,))[1])(jnp.eye(3, 3 * n, dtype=flat.dtype))
        blocks = jnp.transpose(columns.reshape(3, n, 3), (1, 2, 0))  # K(ξ_k − ξ_0)[a, b] = H[(k, a), (0, b)]
        # the site of ξ_i − ξ_j + ξ_0, from integer coordinates on the half-cell grid
        grid = 2 * int(self.repeats)
        integer = np.rint(self.sites * 2.0 / self.lattice_constant).astype(int) % grid
        if not np.allclose(integer * (0.5 * self.lattice_constant), self.sites, atol=1e-8):
            raise ValueError("lattice_hessian: the sites are not on the half-cell grid of a bcc lattice")
        lookup = np.full((grid,) * 3, -1)
        lookup[tuple(integer.T)] = np.arange(n)
        moved = (integer[:, None, :] - integer[None, :, :] + integer[0]) % grid
        table = lookup[moved[..., 0], moved[..., 1], moved[..., 2]]
        if np.any(table < 0):  # a translate that is not a site would silently pick the last atom
            raise ValueError("lattice_hessian: a lattice translate of a site is not a site of the crystal")
        return jnp.transpose(blocks[table], (0, 2, 1, 3)).reshape(3 * n, 3 * n)

    def relax(self, deformation, hessian: Float[Array, "3n 3n"], iterations: int = 12):
        """``iterations`` Newton steps from the deformed sites with a fixed (possibly approximate) Hessian
        (3n, 3n) eV/Å² (translations pinned): ``(u (n, 3) Å, largest |force| eV/Å)``; the caller judges the
        force (a poor Hessian converges slowly, never wrongly)."""
        deformation = jnp.asarray(deformation)
        dtype = deformation.dtype
        translation = jnp.tile(jnp.eye(3, dtype=dtype), (self.n_atoms, 1)) / np.sqrt(self.n_atoms)
        compiled_gradient, _ = self._compiled
        u = jnp.zeros((self.n_atoms, 3), dtype)
        factor = jax.scipy.linalg.cho_factor(hessian + translation @ translation.T)
        for _ in range(iterations):
            step = jax.scipy.linalg.cho_solve(factor, jnp.reshape(compiled_gradient(u, deformation), (-1,)))
            u = u - jnp.reshape(step, u.shape)
        return u, float(jnp.max(jnp.abs(compiled_gradient(u, deformation))))

    def relaxed(self, deformation, iterations: int = 12):
        """The 0-K configuration at the total deformation F by ``iterations`` Newton steps (:meth:`relax`)
        with the Hessian at the deformed sites, then the Hessian there:
        ``(u⁰ (n, 3) Å, Hessian at u⁰ (3n, 3n) eV/Å², largest |force| eV/Å)``."""
        deformation = jnp.asarray(deformation)
        _, compiled_hessian = self._compiled
        u, max_force = self.relax(deformation, compiled_hessian(jnp.zeros((self.n_atoms, 3), deformation.dtype),
                                                                deformation), iterations)
        return u, compiled_hessian(u, deformation), max_force

    @functools.cached_property
    def _compiled(self):
        """−∇V and ∇²V jitted once per crystal (every condition reuses the compilation)."""
        return jax.jit(lambda u, f: -self.forces(u, f)), jax.jit(lambda u, f: self.hessian(u, f))

    @functools.cached_property
    def _compiled_context(self):
        """:meth:`context` jitted once per crystal."""
        return jax.jit(self.context)

    def schur_softening(self, hessian: Float[Array, "3n 3n"]) -> Float[Array, "3m 3m"]:
        """W = H_XY H_YY⁻¹ H_YX, eV/Å², inner coordinates in :attr:`inner` order (atom, x/y/z): the
        harmonic marginal of X has precision β(H_XX − W), the clamped one βH_XX."""
        x = (3 * self.inner[:, None] + np.arange(3)).reshape(-1)
        y = (3 * self.outer[:, None] + np.arange(3)).reshape(-1)
        coupling = hessian[np.ix_(y, x)]
        return coupling.T @ jnp.linalg.solve(hessian[np.ix_(y, y)], coupling)


class Reference(NamedTuple):
    """The per-condition data of the reference score: ``relaxed`` u⁰_X (m, 3) Å, ``context`` of the
    relaxed outer atoms, ``softening`` W (3m, 3m) eV/Å², ``lattice_context`` the outer atoms at their
    deformed sites (the clamped baseline), ``max_force`` of the relaxation (eV/Å), and the whole
    crystal's ``relaxed_all`` u⁰ (n, 3) Å and ``hessian`` (3n, 3n) eV/Å² there."""

    relaxed: jax.Array
    context: BccCrystal.Context
    softening: jax.Array
    lattice_context: BccCrystal.Context
    max_force: jax.Array
    relaxed_all: jax.Array
    hessian: jax.Array


def reference(crystal: BccCrystal, deformation, *, tolerance: float = 1e-6) -> Reference:
    """:class:`Reference` at the total deformation F (relaxation, Hessian and Schur complement).

    Raises:
        RuntimeError: the relaxation left a force above ``tolerance`` (eV/Å): the Hessian and W would
            belong to no equilibrium (e.g. F far outside the solid's range).
    """
    deformation = jnp.asarray(deformation)
    u, hessian, max_force = crystal.relaxed(deformation)
    if not max_force <= tolerance:
        raise RuntimeError(f"the relaxation at F = {np.asarray(deformation).round(5).tolist()} left a force of "
                           f"{max_force:.3g} eV/Å > tolerance {tolerance:g} eV/Å")
    softening = crystal.schur_softening(hessian)
    zero = jnp.zeros_like(u)
    context = crystal._compiled_context
    return Reference(u[crystal.inner], context(u, deformation), softening, context(zero, deformation),
                     jnp.asarray(max_force), u, hessian)


def reference_score(crystal: BccCrystal, inner: Float[Array, "m 3"], deformation, temperature,
                    data: Reference) -> Float[Array, "m 3"]:
    """S_ref(u_X) = −β[∇_X V(u_X, u⁰_Y) − W(u_X − u⁰_X)], 1/Å (module docstring): the EAM forces on X with
    the outer atoms at their relaxed positions, softened by the outer atoms' harmonic response.
    Linearised about u⁰_X it is −β(H_XX − W)(u_X − u⁰_X), the exact harmonic marginal's score."""
    clamped = crystal.clamped_score(inner, deformation, temperature, data.context)
    shift = jnp.reshape(data.softening @ jnp.reshape(inner - data.relaxed, (-1,)), inner.shape)
    return clamped + beta_from_temperature(temperature) * shift


def thermal_expansion(potential: EAM, temperatures, key, *, lattice_constant: float = 2.8553, repeats: int = 5,
                      n_steps: int = 3000, burn_in: int = 1000, iterations: int = 2, time_step: float = 0.2,
                      friction: float = 0.2, dtype=None) -> np.ndarray:
    """a(T)/a₀ of the perfect crystal at each T ``(t,)`` K: the zero-pressure lattice constant from the
    mean pressure p of a periodic ``repeats``³-cell crystal sampled by BAOAB (jax-md), corrected as
    a ← a(1 + p/3B) with the 0-K bulk modulus B = E''(λ)/(9V) of the potential, ``iterations`` times
    (vmapped over T). The conditions' F is the deformation of the crystal at T (stress-free at F = I):
    the total deformation of the 0-K lattice is F · a(T)/a₀ (:func:`total_deformation`)."""
    crystal = BccCrystal(potential, repeats=repeats, lattice_constant=lattice_constant, vacancy=False)
    dtype = dtype or jnp.zeros(0).dtype
    temperatures = jnp.asarray(temperatures, dtype)
    zero = jnp.zeros((crystal.n_atoms, 3), dtype)
    curvature = jax.grad(jax.grad(lambda s: crystal.energy(zero, s * jnp.eye(3, dtype=dtype))))(jnp.asarray(1.0, dtype))
    volume = crystal.n_atoms * lattice_constant**3 / 2.0
    bulk = curvature / (9.0 * volume)
    scale = jnp.ones_like(temperatures)
    for index in range(iterations):
        f = scale[:, None, None] * jnp.eye(3, dtype=dtype)
        samples = sample_full(crystal, jax.random.fold_in(key, index), f, temperatures, replicas=1,
                              n_steps=n_steps, burn_in=burn_in, thin=n_steps // 10, chunks=1,
                              time_step=time_step, friction=friction, observables=False)
        stress = jnp.asarray(samples.stress.mean(axis=(1, 2)))
        cauchy = jnp.einsum("cij,ckj->cik", stress, f) / jnp.linalg.det(f)[:, None, None]
        pressure = -jnp.trace(cauchy, axis1=1, axis2=2) / 3.0
        scale = scale * (1.0 + pressure / (3.0 * bulk))
    return np.asarray(scale)


class FullSamples(NamedTuple):
    """Samples of :func:`sample_full`, axes (condition, replica, kept, ...): ``displacement`` u of every
    atom and ``force`` −β∇_u V of every atom (Å, 1/Å; u from the centre of mass), ``inner`` u_X,
    ``force_target`` −β∇_X V, ``core_stress`` (:meth:`BccCrystal.core_stress`)
    and ``stress`` (periodic) (eV/Å³), ``energy`` V per atom (eV); ``seconds`` of sampling (compilation
    excluded) and ``checks``."""

    displacement: np.ndarray
    force: np.ndarray
    inner: np.ndarray
    force_target: np.ndarray
    core_stress: np.ndarray
    stress: np.ndarray
    energy: np.ndarray
    seconds: float
    checks: dict


def sample_full(crystal: BccCrystal, key, deformations, temperatures, *, replicas: int = 4, n_steps: int = 4000,
                thin: int = 20, burn_in: int = 1000, time_step: float = 0.2, friction: float = 0.2,
                chunks: int = 10, observables: bool = True, progress: bool = False) -> FullSamples:
    """Canonical samples of the whole crystal by jax-md's BAOAB Langevin integrator
    (``simulate.nvt_langevin`` with :meth:`BccCrystal.forces`), vmapped over conditions and replicas.

    Arguments:
        deformations: the *total* deformations ``(c, 3, 3)`` (:func:`total_deformation`);
        temperatures ``(c,)`` K. replicas: independent runs per condition. n_steps: steps after
        ``burn_in``, every ``thin``-th kept; time_step Δt (√(amu Å²/eV) ≈ 10.18 fs); friction γ.
        chunks: host round trips (progress bar). observables: False keeps only the periodic stress (the
        pair-list check below still runs).

    Checks (``checks``): τ_int of the core stress trace in kept samples (``tau_core_stress``), the
    equilibration drift z of V between the halves (``energy_drift_z``), and the smallest distance of
    a pair *not* in the fixed list (``min_unlisted_distance``: above the cut-off, the list is exact).

    Raises:
        ValueError: bad shapes or counts.
        RuntimeError: a pair outside the fixed list came within the cut-off (the forces missed it; the
            crystal melted or the skin is too small), with the distance.
    """
    dtype = jnp.asarray(deformations).dtype
    # pairs just beyond the list (up to 1.5 Å further): none may come within the cut-off
    sites = crystal.sites
    vectors = crystal.minimum_image(sites[None] - sites[:, None])
    distance = np.linalg.norm(vectors, axis=-1)
    reach = crystal.potential.cutoff + crystal.skin
    far_i, far_j = np.nonzero(np.triu((distance >= reach) & (distance < reach + 1.5), k=1))
    far_vectors = vectors[far_i, far_j]

    def record(u, f, kt):
        temperature = temperature_from_thermal_energy(kt)
        far = jnp.asarray(far_vectors, dtype) @ f.T + u[far_j] - u[far_i]
        checked = (crystal.stress(u, f, temperature), jnp.min(jnp.linalg.norm(far, axis=-1)))
        if not observables:
            return checked
        return checked + (u, crystal.forces(u, f) / kt, crystal.core_stress(u[crystal.inner], f, temperature),
                          crystal.energy(u, f) / crystal.n_atoms)

    shaped, seconds = baoab_batches(crystal.forces, (crystal.n_atoms, 3), crystal.mass, key, deformations,
                                    temperatures, record, replicas=replicas, n_steps=n_steps, thin=thin,
                                    burn_in=burn_in, time_step=time_step, friction=friction, chunks=chunks,
                                    progress=progress)
    stress, unlisted = shaped[:2]
    if not float(unlisted.min()) > crystal.potential.cutoff:
        raise RuntimeError(f"an unlisted pair came to {float(unlisted.min()):.3f} Å, within the cut-off "
                           f"{crystal.potential.cutoff} Å: the fixed pair list missed interactions (the crystal "
                           f"melted, or skin = {crystal.skin} Å is too small)")
    if not observables:
        return FullSamples(None, None, None, None, None, stress, None, seconds, {})
    displacement, force, core, energy = shaped[2:]
    checks = {"tau_core_stress": [integrated_autocorrelation_time(core[c, :, :, 0, 0]) for c in range(core.shape[0])],
              "energy_drift_z": energy_drift_z(energy),
              "min_unlisted_distance": float(unlisted.min()), "cutoff": float(crystal.potential.cutoff)}
    return FullSamples(displacement, force, displacement[..., crystal.inner, :], force[..., crystal.inner, :], core,
                       stress, energy, seconds, checks)
