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
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..systems import triangular
from .stress import bond_stress
from ..units import BOLTZMANN_EV_PER_K


@dataclasses.dataclass(frozen=True)
class HarmonicLattice:
    """A periodic triangular lattice with Morse-stiffness springs, split into inner and outer atoms.

    Attributes:
        repeats: rectangular two-atom cells (nx, ny) of the periodic box.
        spacing: reference nearest-neighbour distance r₀, Å (the Morse minimum).
        depth: Morse D, eV; width: Morse α, 1/Å.
        inner_radius: Å; atoms this close to the box centre are the inner region X.
    """

    repeats: tuple = (6, 4)
    spacing: float = 2.5
    depth: float = 0.3
    width: float = 1.5
    inner_radius: float = 2.6

    def __post_init__(self):
        repeats = tuple(int(r) for r in self.repeats)
        if len(repeats) != 2 or min(repeats) < 2:
            raise ValueError(f"repeats must be two integers >= 2; got {self.repeats!r}")
        object.__setattr__(self, "repeats", repeats)
        for name in ("spacing", "depth", "width", "inner_radius"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and > 0; got {value!r}")
        if not 0 < self.n_inner < self.n_atoms - 1:
            raise ValueError(f"inner_radius {self.inner_radius} Å selects {self.n_inner} of {self.n_atoms} atoms: "
                             "the inner region must hold at least one atom and leave outer ones")

    # --- geometry (NumPy, fixed per lattice) ---------------------------------------------------
    @functools.cached_property
    def reference(self) -> tuple[np.ndarray, np.ndarray]:
        """Reference sites ξ ``(N, 2)`` and box ``(2, 2)`` (rows are box vectors), Å (NumPy, so
        the model's functions can be traced)."""
        with jax.ensure_compile_time_eval():
            system = triangular(self.spacing, self.repeats)
            return np.asarray(system.positions, dtype=float), np.asarray(system.cell.vectors, dtype=float)

    @property
    def n_atoms(self) -> int:
        return 2 * self.repeats[0] * self.repeats[1]

    @functools.cached_property
    def bonds(self) -> tuple[np.ndarray, np.ndarray]:
        """Nearest-neighbour pairs ``(B, 2)`` (i < j) and their reference vectors ξ_j − ξ_i ``(B, 2)``
        (minimum image)."""
        sites, box = self.reference
        delta = sites[None, :, :] - sites[:, None, :]
        fractional = delta @ np.linalg.inv(box)
        delta = (fractional - np.round(fractional)) @ box
        distance = np.linalg.norm(delta, axis=-1)
        i, j = np.nonzero(np.triu(np.abs(distance - self.spacing) < 1e-6 * self.spacing, k=1))
        return np.stack([i, j], axis=1), delta[i, j]

    @property
    def centre_distance(self) -> np.ndarray:
        sites, box = self.reference
        return np.linalg.norm(sites - 0.5 * box.sum(axis=0), axis=-1)

    @property
    def inner(self) -> np.ndarray:
        """Indices of the inner atoms X, nearest the centre first."""
        distance = self.centre_distance
        order = np.argsort(distance, kind="stable")
        return order[distance[order] < self.inner_radius]

    @property
    def n_inner(self) -> int:
        return int(np.sum(self.centre_distance < self.inner_radius))

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
    def bond_stiffness(self, distance):
        """κ(r) = φ''(r) of the Morse bond, eV/Å²."""
        decay = jnp.exp(-self.width * (distance - self.spacing))
        return self.depth * self.width**2 * (4.0 * decay**2 - 2.0 * decay)

    def stiffness_matrix(self, deformation: Float[Array, "dim dim"]) -> Float[Array, "free free"]:
        """K(F) over the free atoms, ordered (inner X, outer Y), each atom's (x, y) together; eV/Å²."""
        pairs, vectors = self.bonds
        deformed = vectors @ jnp.asarray(deformation).T
        distance = jnp.linalg.norm(deformed, axis=-1)
        direction = deformed / distance[:, None]
        blocks = self.bond_stiffness(distance)[:, None, None] * direction[:, :, None] * direction[:, None, :]
        n = self.n_atoms
        full = jnp.zeros((n, n, 2, 2), blocks.dtype)
        i, j = pairs[:, 0], pairs[:, 1]
        full = full.at[i, i].add(blocks).at[j, j].add(blocks).at[i, j].add(-blocks).at[j, i].add(-blocks)
        order = np.concatenate([self.inner, self.outer])
        free = full[order][:, order]  # (n_free, n_free, 2, 2)
        return free.transpose(0, 2, 1, 3).reshape(2 * order.size, 2 * order.size)

    def inner_stiffness(self, deformation) -> Float[Array, "inner inner"]:
        """The Schur complement S(F) = K_XX − K_XY K_YY⁻¹ K_YX, eV/Å² ((2m, 2m), m inner atoms)."""
        stiffness = self.stiffness_matrix(deformation)
        m = 2 * self.n_inner
        coupling = stiffness[:m, m:]
        return stiffness[:m, :m] - coupling @ jnp.linalg.solve(stiffness[m:, m:], coupling.T)

    def score(self, displacement: Float[Array, "m dim"], deformation, temperature) -> Float[Array, "m dim"]:
        """The exact score ∇_{u_X} log ρ_e = −β S(F) u_X, 1/Å."""
        beta = 1.0 / (BOLTZMANN_EV_PER_K * temperature)
        flat = jnp.reshape(displacement, (-1,))
        return jnp.reshape(-beta * self.inner_stiffness(deformation) @ flat, jnp.shape(displacement))

    def inner_covariance(self, deformation, temperature) -> Float[Array, "inner inner"]:
        """Covariance of u_X, k_BT S⁻¹, Å²."""
        return BOLTZMANN_EV_PER_K * temperature * jnp.linalg.inv(self.inner_stiffness(deformation))

    def sample(self, key, deformation, temperature, n_samples: int):
        """Exact canonical samples of the full system: ``(inner (S, m, 2), outer (S, n_out, 2),
        force_target (S, m, 2))``, displacements in Å and the force-matching target −β∇_X V in 1/Å."""
        stiffness = self.stiffness_matrix(deformation)
        kt = BOLTZMANN_EV_PER_K * temperature
        cholesky = jnp.linalg.cholesky(stiffness)
        noise = jax.random.normal(key, (n_samples, stiffness.shape[0]), stiffness.dtype)
        # u = √(k_BT) L⁻ᵀ z has covariance k_BT (L Lᵀ)⁻¹ = k_BT K⁻¹
        displacement = jnp.sqrt(kt) * jax.scipy.linalg.solve_triangular(cholesky, noise.T, lower=True, trans=1).T
        m = 2 * self.n_inner
        target = -(displacement @ stiffness[:, :m]) / kt
        return (displacement[:, :m].reshape(n_samples, -1, 2), displacement[:, m:].reshape(n_samples, -1, 2),
                target.reshape(n_samples, -1, 2))

    # --- stress ---------------------------------------------------------------------------------
    def pair_derivative(self, distance):
        """φ'(r) of the Morse bond, eV/Å."""
        decay = jnp.exp(-self.width * (distance - self.spacing))
        return 2.0 * self.depth * self.width * (decay - decay**2)

    def pair_energy(self, distance):
        """φ(r) of the Morse bond, eV."""
        decay = jnp.exp(-self.width * (distance - self.spacing))
        return self.depth * (decay**2 - 2.0 * decay)

    @property
    def atom_volume(self) -> float:
        """Reference area per atom, √3/2 r₀², Å²."""
        return 0.5 * np.sqrt(3.0) * self.spacing**2

    @functools.cached_property
    def inner_bonds(self) -> tuple[np.ndarray, np.ndarray]:
        """Bonds with both atoms inner: pairs ``(b, 2)`` indexing the inner atoms (in :attr:`inner`
        order) and reference vectors ``(b, 2)``."""
        pairs, vectors = self.bonds
        position = np.full(self.n_atoms, -1)
        position[self.inner] = np.arange(self.n_inner)
        local = position[pairs]
        keep = np.all(local >= 0, axis=1)
        return local[keep], vectors[keep]

    def inner_stress(self, displacement: Float[Array, "m 2"], deformation, temperature) -> Float[Array, "2 2"]:
        """The local bond stress of the inner region for one sample u_X (m, 2) Å, eV/Å²."""
        pairs, vectors = self.inner_bonds
        deformation = jnp.asarray(deformation)
        bond = vectors @ deformation.T + displacement[pairs[:, 1]] - displacement[pairs[:, 0]]
        return bond_stress(self.pair_derivative, bond, deformation, temperature, coordination=6,
                           atom_volume=self.atom_volume)

    def clamped_covariance(self, deformation, temperature) -> Float[Array, "inner inner"]:
        """Covariance of u_X with the outer atoms clamped at the lattice sites, k_BT K_XX⁻¹, Å²."""
        m = 2 * self.n_inner
        return BOLTZMANN_EV_PER_K * temperature * jnp.linalg.inv(self.stiffness_matrix(deformation)[:m, :m])

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
