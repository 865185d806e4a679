"""Neighbour lists through jax-md's ``partition`` (cell list + Dense neighbour list).

The search runs in fractional coordinates of a *search cell*: the simulation cell with
every free direction padded by vacuum (twice the search range on each side), so one
jax-md code path serves periodic, free and mixed boundaries in 1, 2 and 3 dimensions.
Only indices come out of the search; energies use the true cell's displacements.

Overflow never passes silently:

* :meth:`NeighborList.update` is jit-safe and sets :attr:`NeighborList.overflow` when
  the buffer is too small, the cell list overflowed, or an atom left the padded
  search region;
* :func:`refresh` (host side) updates and re-allocates when that happens;
* every energy that takes a neighbour list checks the flag with ``equinox.error_if``,
  so an overflowed list raises instead of giving a wrong energy.

A list also goes stale when atoms move: it holds every pair closer than ``cutoff + skin``
*where it was built*, so after atoms moved by up to δ it still holds every pair closer than
``cutoff + skin − 2δ`` (:meth:`NeighborList.reach`). Every evaluation checks that this covers
its interaction range (the potential's cut-off; for the VG free energy the cut-off plus the
Gaussians' reach, :meth:`dmdjax.free_energy.VGFreeEnergy.interaction_range`).
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from . import _validate
from ._precision import HIGHEST
from .cell import Cell

OVERFLOW_MESSAGE = (
    "neighbour list overflow: the list is too small for the current positions (or an atom left the "
    "padded search region of a free direction); call dmdjax.neighbors.refresh(neighbors, positions) "
    "outside jit to re-allocate it"
)


class NeighborList(eqx.Module):
    """A Dense neighbour list: ``idx[i, m]`` is the m-th neighbour of i, or N (padding).

    Attributes:
        state: jax-md's ``partition.NeighborList`` (over fractional search coordinates).
        search_inverse: inverse of the search cell (rows), ``(d, d)``.
        origin: origin of the search cell, ``(d,)``, Å.
        out_of_range: True when an atom left the padded search region.
        pbc: periodic flags of the simulation cell.
        cutoff, skin: interaction cut-off and Verlet skin, Å. Periodic widths must be at least
            2 × cutoff (each pair interacts through one image); the skin may reach further.
    """

    state: Any  # jax_md.partition.NeighborList
    search_inverse: Float[Array, "d d"]
    origin: Float[Array, " d"]
    out_of_range: Bool[Array, ""]
    pbc: tuple[bool, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    skin: float = eqx.field(static=True)
    search_scale: float = eqx.field(static=True, default=1.0)

    @property
    def idx(self) -> Int[Array, "n m"]:
        return self.state.idx

    @property
    def capacity(self) -> int:
        """Neighbour slots per atom (``idx.shape[1]``)."""
        return self.state.idx.shape[1]

    @property
    def overflow(self) -> Bool[Array, ""]:
        """True when the list cannot be trusted (see the module docstring)."""
        return (self.state.did_buffer_overflow != 0) | self.out_of_range

    @property
    def search_range(self) -> float:
        """``cutoff + skin``, Å: the list holds every pair this close where it was built."""
        return self.cutoff + self.skin

    def max_displacement(self, positions: Float[Array, "n d"]) -> Float[Array, ""]:
        """Largest distance (Å) an atom moved since the list was (re)built (jit-safe).

        Periodic directions use the minimum image; an atom that left the padded search
        region of a free direction counts as infinitely far.
        """
        fractional, outside = self._fractional(positions)
        delta = (fractional - self.state.reference_position.astype(fractional.dtype)) / self.search_scale
        periodic = jnp.asarray(self.pbc)
        delta = jnp.where(periodic, delta - jnp.round(delta), delta)
        vectors = jnp.linalg.inv(self.search_inverse.astype(positions.dtype))
        moved = jnp.max(jnp.linalg.norm(jnp.matmul(delta, vectors, precision=HIGHEST), axis=-1))
        return jnp.where(outside | self.out_of_range, jnp.inf, moved)

    def reach(self, positions: Float[Array, "n d"]) -> Float[Array, ""]:
        """The largest interaction range (Å) the list still covers at ``positions``:
        ``cutoff + skin − 2 max_displacement`` (every pair closer than it is listed)."""
        return self.search_range - 2.0 * self.max_displacement(positions)

    def _fractional(self, positions: Float[Array, "n d"]) -> tuple[Array, Array]:
        f = jnp.matmul(positions - self.origin.astype(positions.dtype), self.search_inverse.astype(positions.dtype),
                       precision=HIGHEST)
        periodic = jnp.asarray(self.pbc)
        wrapped = jnp.where(periodic, f - jnp.floor(f), f)
        # Free directions: stay at least one search range away from the padded faces.
        margin = self._free_margin().astype(positions.dtype)
        outside = (~periodic) & ((f < margin) | (f > 1.0 - margin))
        return wrapped * self.search_scale, jnp.any(outside)

    def _free_margin(self) -> Array:
        # Fraction of each search-cell width taken by one search range (|b_k| = 1/width_k).
        return (self.cutoff + self.skin) * jnp.linalg.norm(self.search_inverse, axis=0)

    def update(self, positions: Float[Array, "n d"]) -> "NeighborList":
        """Update for new positions (jit-safe; rebuilds when an atom moved > skin/2)."""
        fractional, outside = self._fractional(positions)
        state = self.state.update(fractional)
        return NeighborList(state, self.search_inverse, self.origin, self.out_of_range | outside, self.pbc,
                            self.cutoff, self.skin, self.search_scale)


def _search_cell(positions: np.ndarray, cell: Cell, search_range: float) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.array(cell.vectors, dtype=float)
    origin = np.zeros(cell.dim)
    pad = 2.0 * search_range
    for k, periodic in enumerate(cell.pbc):
        if periodic:
            continue
        unit = vectors[k] / np.linalg.norm(vectors[k])
        projection = positions @ unit
        lo, hi = projection.min(), projection.max()
        vectors[k] = unit * (hi - lo + 2.0 * pad)
        origin += (lo - pad) * unit
    return vectors, origin


def neighbor_list(
    positions: Float[Array, "n d"],
    cell: Cell,
    cutoff: float,
    *,
    skin: float = 0.5,
    capacity_multiplier: float = 1.25,
) -> NeighborList:
    """Allocate a Dense neighbour list of all pairs closer than ``cutoff + skin``.

    Arguments:
        positions: ``(N, d)`` positions, Å.
        cell: the simulation :class:`~dmdjax.cell.Cell`.
        cutoff: interaction cut-off (e.g. ``potential.cutoff``), Å.
        skin: Verlet skin, Å; the list is rebuilt when an atom moves more than skin/2.
        capacity_multiplier: spare capacity over the current maximal neighbour count.

    Raises:
        ValueError: bad arguments, or a periodic cell narrower than twice ``cutoff``.
    """
    positions_np = np.asarray(positions)
    _validate.shape(positions_np, (None, cell.dim), "positions")
    _validate.finite(positions_np, "positions")
    if not (np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be finite and > 0 Å; got {cutoff!r}")
    if not (np.isfinite(skin) and skin >= 0):
        raise ValueError(f"skin must be finite and >= 0 Å; got {skin!r}")
    if capacity_multiplier < 1.0:
        raise ValueError(f"capacity_multiplier must be >= 1; got {capacity_multiplier!r}")

    search_range = float(cutoff) + float(skin)
    # Each neighbour is listed once, at its minimum image: the interaction range (the cut-off)
    # must fit in half a periodic width; the skin may reach past it.
    cell.check_minimum_image(float(cutoff))
    vectors, origin = _search_cell(positions_np, cell, search_range)
    gram = vectors @ vectors.T
    box = np.linalg.cholesky(gram).T  # upper triangular, box.T @ box = gram
    dtype = positions.dtype if hasattr(positions, "dtype") else jnp.asarray(positions).dtype
    # Equal searches share one jax-md function: its update closure is part of the list's
    # static structure, so a new closure per build would recompile every jitted caller.
    neighbor_fns, search_scale = _jax_md_neighbor_fns(cell.dim, tuple(box.reshape(-1).tolist()),
                                                      jnp.dtype(dtype).name, float(cutoff), float(skin),
                                                      float(capacity_multiplier))
    template = NeighborList(
        state=None, search_inverse=jnp.asarray(np.linalg.inv(vectors), dtype=dtype),
        origin=jnp.asarray(origin, dtype=dtype), out_of_range=jnp.asarray(False), pbc=cell.pbc,
        cutoff=float(cutoff), skin=float(skin), search_scale=search_scale,
    )
    fractional, outside = template._fractional(jnp.asarray(positions, dtype=dtype))
    with warnings.catch_warnings():
        # jax-md scatters int64 into int32 under x64; harmless, but noisy.
        warnings.filterwarnings("ignore", message="scatter inputs have incompatible types")
        state = neighbor_fns.allocate(fractional)
    return eqx.tree_at(lambda n: (n.state, n.out_of_range), template, (state, outside),
                       is_leaf=lambda x: x is None)


@functools.lru_cache(maxsize=64)
def _jax_md_neighbor_fns(dim, box, dtype, cutoff, skin, capacity_multiplier):
    from jax_md import partition, space

    box = np.asarray(box).reshape(dim, dim)
    if dim == 1:
        # jax-md's periodic_general returns (1, 1) displacements in 1-D: search in Å instead.
        search_scale = float(box[0, 0])
        displacement, _ = space.periodic(search_scale)
        search_box, fractional_search = search_scale, False
    else:
        search_scale = 1.0
        search_box, fractional_search = jnp.asarray(box, dtype=dtype), True
        displacement, _ = space.periodic_general(search_box, fractional_coordinates=True)
    neighbor_fns = partition.neighbor_list(
        displacement,
        search_box,
        cutoff,
        dr_threshold=skin,
        capacity_multiplier=capacity_multiplier,
        fractional_coordinates=fractional_search,
        disable_cell_list=dim == 1,
        format=partition.NeighborListFormat.Dense,
    )
    return neighbor_fns, search_scale


def refresh(neighbors: NeighborList, positions: Float[Array, "n d"], cell: Cell,
            capacity_multiplier: float = 1.25) -> NeighborList:
    """Update ``neighbors`` for ``positions``; re-allocate (host side) when it overflows."""
    updated = neighbors.update(positions)
    if bool(updated.overflow):
        return neighbor_list(positions, cell, neighbors.cutoff, skin=neighbors.skin,
                             capacity_multiplier=capacity_multiplier)
    return updated


def covering(neighbors: NeighborList, positions: Float[Array, "n d"], cell: Cell, interaction_range: float,
             *, margin: float = 0.0) -> NeighborList:
    """``neighbors`` if it still covers ``interaction_range`` (Å) at ``positions`` and has not
    overflowed; otherwise a list rebuilt there (host side) with the same skin and
    ``cutoff = max(neighbors.cutoff, interaction_range + margin)``."""
    interaction_range = float(interaction_range)
    if not bool(neighbors.overflow) and float(neighbors.reach(positions)) >= interaction_range:
        return neighbors
    cutoff = max(neighbors.cutoff, interaction_range + margin)
    return neighbor_list(positions, cell, cell.within_minimum_image(cutoff, interaction_range), skin=neighbors.skin)


def stale_message(interaction_range, neighbors: NeighborList, positions, what: str = "the interaction range") -> str:
    """The error for a list that no longer covers ``interaction_range`` at ``positions``."""
    moved = float(neighbors.max_displacement(positions))
    return (f"stale neighbour list: {what} is {float(interaction_range):.4f} Å, but atoms moved up to "
            f"{moved:.4f} Å since the list was built, so it only covers cutoff + skin - 2 x {moved:.4f} = "
            f"{float(neighbors.reach(positions)):.4f} Å (cutoff {neighbors.cutoff:g} Å, skin {neighbors.skin:g} Å); "
            "rebuild it at the current positions (dmdjax.neighbor_list or dmdjax.neighbors.covering)")


def gather(values: Array, idx: Int[Array, "n m"], fill=0) -> Array:
    """``values[idx]`` for a Dense list: shape ``idx.shape + values.shape[1:]``, ``fill`` on padding slots."""
    pad = jnp.full((1,) + values.shape[1:], fill, dtype=values.dtype)
    return jnp.concatenate([values, pad], axis=0)[idx]


def check(value, neighbors: NeighborList):
    """Return ``value``, raising (also under jit) if ``neighbors`` overflowed."""
    return eqx.error_if(value, neighbors.overflow, OVERFLOW_MESSAGE)
