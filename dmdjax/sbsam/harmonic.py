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
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..systems import triangular
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
