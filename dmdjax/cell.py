"""Simulation cells: periodic, free and mixed boundaries in 1, 2 and 3 dimensions.

A :class:`Cell` holds the cell vectors as *rows* (ASE's convention) and one periodic
flag per cell vector. Displacements use the minimum image along periodic vectors and
plain differences along free ones. Free vectors must be orthogonal to the periodic
ones (a slab free along x is periodic in y and z); when a free vector is zero (ASE's
default for a non-periodic axis) a unit vector orthogonal to the periodic ones is used.
"""

from __future__ import annotations

from typing import Sequence

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _validate


class Cell(eqx.Module):
    """Cell vectors and boundary conditions.

    Attributes:
        vectors: ``(d, d)`` cell vectors as rows, Å. Rows of free directions are unit
            vectors orthogonal to the periodic rows (their length plays no role).
        pbc: ``d`` booleans, True where the cell is periodic along that row.
    """

    vectors: Float[Array, "d d"]
    pbc: tuple[bool, ...] = eqx.field(static=True)

    @property
    def dim(self) -> int:
        return len(self.pbc)

    @property
    def fully_periodic(self) -> bool:
        return all(self.pbc)

    def displacement(self, ra: Float[Array, "... d"], rb: Float[Array, "... d"]) -> Float[Array, "... d"]:
        """Minimum-image displacement ``ra - rb`` (shape ``(..., d)``, Å).

        Periodic components are wrapped by the nearest lattice translation; free
        components are left alone. Differentiable in positions and cell vectors.
        """
        dr = ra - rb
        if not any(self.pbc):
            return dr
        vectors = self.vectors.astype(dr.dtype)
        inverse = jnp.linalg.inv(vectors)
        periodic = jnp.asarray(self.pbc, dtype=dr.dtype)
        # d ≤ 3: explicit sums of products (exact, and fused by XLA; a batched matmul of
        # 3-vectors is ten times slower on XLA:CPU).
        fractional = sum(dr[..., k:k + 1] * inverse[k] for k in range(self.dim))
        shift = jnp.round(fractional) * periodic
        return dr - sum(shift[..., k:k + 1] * vectors[k] for k in range(self.dim))

    def volume(self) -> Array:
        """|det(vectors)|: volume (3-D), area (2-D) or length (1-D) of a periodic cell."""
        return jnp.abs(jnp.linalg.det(self.vectors))

    def perpendicular_widths(self) -> np.ndarray:
        """Widths of the cell between opposite faces, one per cell vector (host side)."""
        inverse = np.linalg.inv(np.asarray(self.vectors, dtype=float))
        return 1.0 / np.linalg.norm(inverse, axis=0)

    def within_minimum_image(self, wanted: float, needed: float) -> float:
        """``wanted`` (a list cut-off with room to spare) rounded up to a multiple of 1/8 Å,
        lowered to half the narrowest periodic width where that is smaller, but never below
        ``needed`` (then :meth:`check_minimum_image` raises when the list is built). The
        rounding keeps the cut-offs few: a list's cut-off is static, and every new value
        compiles every function that takes the list again (thousands of them once exhausted
        XLA:CPU's code memory and crashed the process)."""
        wanted = float(np.ceil(float(wanted) * 8.0) / 8.0)
        widths = [w for periodic, w in zip(self.pbc, self.perpendicular_widths()) if periodic]
        if not widths:
            return float(wanted)
        return float(max(needed, min(wanted, 0.5 * min(widths))))

    def check_minimum_image(self, interaction_range: float) -> None:
        """Raise if a periodic width is below twice ``interaction_range``.

        The minimum-image convention needs every periodic width ≥ 2 × range.
        """
        widths = self.perpendicular_widths()
        for axis, (periodic, width) in enumerate(zip(self.pbc, widths)):
            if periodic and width < 2.0 * interaction_range:
                raise ValueError(
                    f"cell too small: periodic width {width:.6g} Å along cell vector {axis} is below "
                    f"twice the interaction range {interaction_range:.6g} Å (the cut-off, plus the Gaussians' reach for "
                    "the VG free energy); "
                    "replicate the structure (e.g. atoms.repeat) so that each periodic width is at "
                    f"least {2 * interaction_range:.6g} Å"
                )


def make_cell(vectors, pbc: bool | Sequence[bool], dim: int | None = None) -> Cell:
    """Build a :class:`Cell`, filling in free directions and validating.

    Arguments:
        vectors: ``(d, d)`` cell vectors as rows (Å), a length-``d`` diagonal, or None
            for a fully free system (``dim`` then required).
        pbc: one bool for all directions, or ``d`` bools.
        dim: the dimension when ``vectors`` is None.

    Raises:
        ValueError: bad shapes, a degenerate periodic cell, or a free direction that is
            not orthogonal to the periodic ones.
    """
    if vectors is None:
        if dim is None:
            raise ValueError("make_cell needs `dim` when `vectors` is None")
        vectors = np.zeros((dim, dim))
    v = np.array(vectors, dtype=float)
    if v.ndim == 1:
        v = np.diag(v)
    if v.ndim != 2 or v.shape[0] != v.shape[1]:
        raise ValueError(f"cell vectors must be a (d, d) matrix or a length-d diagonal; got shape {v.shape}")
    d = v.shape[0]
    flags = (bool(pbc),) * d if np.ndim(pbc) == 0 else tuple(bool(p) for p in pbc)
    if len(flags) != d:
        raise ValueError(f"pbc must have {d} entries for a {d}-D cell; got {len(flags)}")
    _validate.finite(v, "cell vectors")
    periodic = [i for i in range(d) if flags[i]]
    free = [i for i in range(d) if not flags[i]]
    if periodic:
        p = v[periodic]
        if np.linalg.matrix_rank(p, tol=1e-8) < len(periodic):
            raise ValueError(f"periodic cell vectors {p.tolist()} are degenerate")
    # Orthonormal complement of the periodic span, for free rows that need one.
    if periodic:
        q, _ = np.linalg.qr(v[periodic].T, mode="complete")
        complement = list(q[:, len(periodic):].T)
    else:
        complement = list(np.eye(d))
    for i in free:
        row = v[i]
        norm = np.linalg.norm(row)
        if norm == 0.0:
            v[i] = complement.pop(0)
            continue
        unit = row / norm
        if periodic and np.max(np.abs(v[periodic] @ unit)) > 1e-8 * max(1.0, np.abs(v).max()):
            raise ValueError(
                f"free cell vector {i} {row.tolist()} must be orthogonal to the periodic cell vectors"
            )
        v[i] = unit
        # Keep the remaining complement orthogonal to this free direction.
        complement = [c - (c @ unit) * unit for c in complement]
        complement = [c / np.linalg.norm(c) for c in complement if np.linalg.norm(c) > 1e-8]
    if abs(np.linalg.det(v)) < 1e-12:
        raise ValueError(f"cell vectors {v.tolist()} are degenerate")
    return Cell(vectors=jnp.asarray(v), pbc=flags)
