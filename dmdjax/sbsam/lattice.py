r"""The periodic triangular Morse lattice shared by the SB-SAM oracle and crystal (DESIGN.md §7).

Reference sites ξ_i of a 2-D triangular lattice (nearest-neighbour spacing ``spacing`` = r₀, the
Morse minimum) in a periodic box of ``repeats`` rectangular two-atom cells; nearest-neighbour
bonds by the minimum image; the inner region X (atoms within ``inner_radius`` of the box centre);
the Morse bond φ(r) = D[e^{−2α(r − r₀)} − 2e^{−α(r − r₀)}] with its derivatives; and the local
bond stress of the inner region (:mod:`~dmdjax.sbsam.stress`). Units: Å, eV, K.
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


@dataclasses.dataclass(frozen=True)
class MorseLattice:
    """Geometry, Morse bond and inner-region stress of a periodic triangular lattice.

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
        return self.pairs_at(self.spacing)

    def pairs_at(self, distance: float) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (i < j) whose minimum-image reference distance is ``distance`` (Å), ``(p, 2)``, and
        their reference vectors ξ_j − ξ_i ``(p, 2)``."""
        sites, box = self.reference
        delta = sites[None, :, :] - sites[:, None, :]
        fractional = delta @ np.linalg.inv(box)
        delta = (fractional - np.round(fractional)) @ box
        separation = np.linalg.norm(delta, axis=-1)
        i, j = np.nonzero(np.triu(np.abs(separation - distance) < 1e-3 * self.spacing, k=1))
        return np.stack([i, j], axis=1), delta[i, j]

    @property
    def centre_distance(self) -> np.ndarray:
        sites, box = self.reference
        return np.linalg.norm(sites - 0.5 * box.sum(axis=0), axis=-1)

    @functools.cached_property
    def inner_symmetries(self) -> tuple:
        """The mirror symmetries g = diag(±1, ±1) of the periodic lattice about the region's centre
        (the box centre) that map every site onto a site, the identity first: ``((g, π), ...)``, g as
        nested tuples, π a tuple with g(ξ_i − c) = ξ_π(i) − c for the inner atoms (positions in
        :attr:`inner` order). The marginal of the inner region is invariant under them when F is
        mapped to g F gᵀ."""
        sites, box = self.reference
        centre = 0.5 * box.sum(axis=0)
        inner = sites[self.inner] - centre
        found = []
        for g in (np.eye(2), np.diag([-1.0, 1.0]), np.diag([1.0, -1.0]), -np.eye(2)):
            images = (sites - centre) @ g.T + centre
            fractional = (images[:, None, :] - sites[None, :, :]) @ np.linalg.inv(box)
            distance = np.linalg.norm((fractional - np.round(fractional)) @ box, axis=-1)
            if not np.all(distance.min(axis=1) < 1e-6 * self.spacing):
                continue  # the periodic lattice is not symmetric under g about the centre
            match = np.linalg.norm((inner @ g.T)[:, None, :] - inner[None, :, :], axis=-1)
            if np.all(match.min(axis=1) < 1e-6 * self.spacing):
                found.append((tuple(map(tuple, g.tolist())), tuple(int(i) for i in match.argmin(axis=1))))
        return tuple(found)

    @property
    def inner(self) -> np.ndarray:
        """Indices of the inner atoms X, nearest the centre first."""
        distance = self.centre_distance
        order = np.argsort(distance, kind="stable")
        return order[distance[order] < self.inner_radius]

    @property
    def n_inner(self) -> int:
        return int(np.sum(self.centre_distance < self.inner_radius))

    def assemble_bond_blocks(self, blocks, order=None):
        """A Hessian-like matrix from one 2 × 2 block K_b per bond (:attr:`bonds`): K_b on the two
        diagonal blocks of its atoms, −K_b on the two off-diagonal ones; over the atoms ``order``
        (default all), each atom's (x, y) together: ``(2·len(order), 2·len(order))``."""
        pairs, _ = self.bonds
        i, j = pairs[:, 0], pairs[:, 1]
        full = jnp.zeros((self.n_atoms, self.n_atoms, 2, 2), blocks.dtype)
        full = full.at[i, i].add(blocks).at[j, j].add(blocks).at[i, j].add(-blocks).at[j, i].add(-blocks)
        if order is not None:
            full = full[order][:, order]
        size = 2 * full.shape[0]
        return full.transpose(0, 2, 1, 3).reshape(size, size)

    # --- the Morse bond -------------------------------------------------------------------------
    def bond_stiffness(self, distance):
        """κ(r) = φ''(r) of the Morse bond, eV/Å²."""
        decay = jnp.exp(-self.width * (distance - self.spacing))
        return self.depth * self.width**2 * (4.0 * decay**2 - 2.0 * decay)

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
    def local_bonds(self) -> np.ndarray:
        """Every bond's atoms as positions in :attr:`inner` order, −1 for an atom outside, ``(B, 2)``."""
        pairs, _ = self.bonds
        position = np.full(self.n_atoms, -1)
        position[self.inner] = np.arange(self.n_inner)
        return position[pairs]

    @functools.cached_property
    def inner_bonds(self) -> tuple[np.ndarray, np.ndarray]:
        """Bonds with both atoms inner: pairs ``(b, 2)`` indexing the inner atoms (in :attr:`inner`
        order) and reference vectors ``(b, 2)``."""
        keep = np.all(self.local_bonds >= 0, axis=1)
        return self.local_bonds[keep], self.bonds[1][keep]

    def inner_stress(self, displacement: Float[Array, "m 2"], deformation, temperature) -> Float[Array, "2 2"]:
        """The local bond stress of the inner region for one sample u_X (m, 2) Å, eV/Å²."""
        pairs, vectors = self.inner_bonds
        deformation = jnp.asarray(deformation)
        bond = vectors @ deformation.T + displacement[pairs[:, 1]] - displacement[pairs[:, 0]]
        return bond_stress(self.pair_derivative, bond, deformation, temperature, coordination=6,
                           atom_volume=self.atom_volume)

