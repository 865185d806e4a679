r"""The exact oracle of SB-SAM: a harmonic triangular lattice under deformation (DESIGN.md §7).

Atoms of a periodic 2-D triangular lattice (reference sites ξ_i, spacing ``spacing``) sit at
x_i = F ξ_i + u_i in the box deformed by F. Nearest neighbours are joined by central springs
linearised about the deformed lattice,

    V(u; F) = ½ Σ_⟨ij⟩ κ(r_ij) [(u_j − u_i) · r̂_ij]²,   r_ij = |F (ξ_j − ξ_i)|,

with κ(r) = φ''(r) of a Morse bond φ(r) = D[e^{−2α(r − r₀)} − 2e^{−α(r − r₀)}], so the
stiffness, and with it every distribution below, depends on F. One outer atom (``anchor``, the
farthest from the centre) is fixed, which removes the two translations. The canonical density
ρ(u | F, T) ∝ e^{−βV} is Gaussian with precision βK(F) (K over the free atoms, (2n, 2n)); the
inner atoms X (within ``inner_radius`` of the centre) have the marginal ρ_e(u_X | F, T), Gaussian
with precision β S(F),

    S = K_XX − K_XY K_YY⁻¹ K_YX   (the Schur complement; DESIGN.md §7),

so the exact score is ∇ log ρ_e = −β S u_X, and the force-matching target −β ∇_X V(X, Y) =
−β (K u)_X has that score as its conditional mean. Units: Å, eV, K.

The inner stress (:meth:`HarmonicLattice.inner_stress`) is the local bond stress of
:mod:`~dmdjax.sbsam.stress` over the bonds inside the inner region, measured with the Morse
forces φ'(r) (the anharmonic potential whose curvature the springs are): its mean over ρ_e is a
nonlinear function of the marginal covariance, computed exactly (to quadrature precision) by
Gauss–Hermite in each bond's 2-D Gaussian (:meth:`HarmonicLattice.exact_inner_stress`). The
baseline with the outer atoms clamped at the deformed lattice sites has precision βK_XX instead.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..units import beta_from_temperature, thermal_energy
from .lattice import MorseLattice
from .stress import bond_stress


@dataclasses.dataclass(frozen=True)
class HarmonicLattice(MorseLattice):
    """A periodic triangular lattice with Morse-stiffness springs, split into inner and outer atoms
    (fields and geometry: :class:`~dmdjax.sbsam.lattice.MorseLattice`; one outer atom, the
    :attr:`anchor`, is fixed)."""

    @property
    def anchor(self) -> int:
        """The fixed atom (farthest from the centre)."""
        return int(np.argmax(self.centre_distance))

    @property
    def outer(self) -> np.ndarray:
        """Indices of the free outer atoms Y."""
        mask = np.ones(self.n_atoms, bool)
        mask[self.inner] = False
        mask[self.anchor] = False
        return np.flatnonzero(mask)

    # --- the model (JAX, differentiable in F) --------------------------------------------------
    def stiffness_matrix(self, deformation: Float[Array, "dim dim"]) -> Float[Array, "free free"]:
        """K(F) over the free atoms, ordered (inner X, outer Y), each atom's (x, y) together; eV/Å²."""
        _, vectors = self.bonds
        deformed = vectors @ jnp.asarray(deformation).T
        distance = jnp.linalg.norm(deformed, axis=-1)
        direction = deformed / distance[:, None]
        blocks = self.bond_stiffness(distance)[:, None, None] * direction[:, :, None] * direction[:, None, :]
        return self.assemble_bond_blocks(blocks, np.concatenate([self.inner, self.outer]))

    def inner_stiffness(self, deformation) -> Float[Array, "inner inner"]:
        """The Schur complement S(F) = K_XX − K_XY K_YY⁻¹ K_YX, eV/Å² ((2m, 2m), m inner atoms)."""
        stiffness = self.stiffness_matrix(deformation)
        m = 2 * self.n_inner
        coupling = stiffness[:m, m:]
        return stiffness[:m, :m] - coupling @ jnp.linalg.solve(stiffness[m:, m:], coupling.T)

    def score(self, displacement: Float[Array, "m dim"], deformation, temperature) -> Float[Array, "m dim"]:
        """The exact score ∇_{u_X} log ρ_e = −β S(F) u_X, 1/Å."""
        beta = beta_from_temperature(temperature)
        flat = jnp.reshape(displacement, (-1,))
        return jnp.reshape(-beta * self.inner_stiffness(deformation) @ flat, jnp.shape(displacement))

    def inner_covariance(self, deformation, temperature) -> Float[Array, "inner inner"]:
        """Covariance of u_X, k_BT S⁻¹, Å²."""
        return thermal_energy(temperature) * jnp.linalg.inv(self.inner_stiffness(deformation))

    def sample(self, key, deformation, temperature, n_samples: int):
        """Exact canonical samples of the full system: ``(inner (S, m, 2), outer (S, n_out, 2),
        force_target (S, m, 2))``, displacements in Å and the force-matching target −β∇_X V in 1/Å."""
        stiffness = self.stiffness_matrix(deformation)
        kt = thermal_energy(temperature)
        cholesky = jnp.linalg.cholesky(stiffness)
        noise = jax.random.normal(key, (n_samples, stiffness.shape[0]), stiffness.dtype)
        # u = √(k_BT) L⁻ᵀ z has covariance k_BT (L Lᵀ)⁻¹ = k_BT K⁻¹
        displacement = jnp.sqrt(kt) * jax.scipy.linalg.solve_triangular(cholesky, noise.T, lower=True, trans=1).T
        m = 2 * self.n_inner
        target = -(displacement @ stiffness[:, :m]) / kt
        return (displacement[:, :m].reshape(n_samples, -1, 2), displacement[:, m:].reshape(n_samples, -1, 2),
                target.reshape(n_samples, -1, 2))

    # --- the clamped baseline and the full system -----------------------------------------------
    def clamped_covariance(self, deformation, temperature) -> Float[Array, "inner inner"]:
        """Covariance of u_X with the outer atoms clamped at the lattice sites, k_BT K_XX⁻¹, Å²."""
        m = 2 * self.n_inner
        return thermal_energy(temperature) * jnp.linalg.inv(self.stiffness_matrix(deformation)[:m, :m])

    def exact_inner_stress(self, deformation, temperature, covariance=None, nodes: int = 16):
        """⟨inner stress⟩ over the Gaussian with ``covariance`` of u_X (default the exact marginal,
        :meth:`inner_covariance`), by a ``nodes``² Gauss–Hermite rule per bond; eV/Å²."""
        deformation = jnp.asarray(deformation)
        if covariance is None:
            covariance = self.inner_covariance(deformation, temperature)
        pairs, vectors = self.inner_bonds
        blocks = jnp.reshape(covariance, (self.n_inner, 2, self.n_inner, 2)).transpose(0, 2, 1, 3)
        i, j = pairs[:, 0], pairs[:, 1]
        bond_covariance = blocks[i, i] + blocks[j, j] - blocks[i, j] - blocks[j, i]  # (b, 2, 2)
        points, weights = np.polynomial.hermite.hermgauss(nodes)
        grid = np.stack(np.meshgrid(points, points, indexing="ij"), -1).reshape(-1, 2) * np.sqrt(2.0)
        grid_weights = np.outer(weights, weights).reshape(-1) / np.pi
        factor = jnp.linalg.cholesky(bond_covariance)  # (b, 2, 2)
        offsets = jnp.einsum("bij,qj->qbi", factor, jnp.asarray(grid, deformation.dtype))  # (q, b, 2)
        bonds = vectors @ deformation.T + offsets
        stresses = jax.vmap(lambda bond: bond_stress(self.pair_derivative, bond, deformation, temperature,
                                                     coordination=6, atom_volume=self.atom_volume))(bonds)
        return jnp.einsum("q,qij->ij", jnp.asarray(grid_weights, deformation.dtype), stresses)

    def energy(self, positions: Float[Array, "n 2"], deformation) -> Float[Array, ""]:
        """The full periodic system's Morse energy Σ_b φ(|d_b|) of all positions (n, 2) Å in the box
        deformed by F (each bond's periodic image shift deformed with it), eV."""
        pairs, vectors = self.bonds
        sites, _ = self.reference
        shift = vectors - (sites[pairs[:, 1]] - sites[pairs[:, 0]])
        bond = positions[pairs[:, 1]] - positions[pairs[:, 0]] + shift @ jnp.asarray(deformation).T
        return jnp.sum(self.pair_energy(jnp.linalg.norm(bond, axis=-1)))

    def positions(self, inner, outer, deformation) -> Float[Array, "n 2"]:
        """Full positions x = Fξ + u (n, 2) Å from one sample's inner and outer displacements (the
        anchor's is zero)."""
        sites, _ = self.reference
        displacement = jnp.zeros((self.n_atoms, 2), inner.dtype)
        displacement = displacement.at[self.inner].set(inner).at[self.outer].set(outer)
        return sites @ jnp.asarray(deformation).T + displacement
