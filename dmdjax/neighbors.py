"""Dense neighbour lists from a cell-list search in row blocks, built and updated on the device.

The search runs in fractional coordinates of a *search cell*: the simulation cell with
every free direction padded by vacuum (twice the search range on each side), so one code
path serves periodic, free and mixed boundaries in 1, 2 and 3 dimensions. Atoms are binned
into cells at least one search range wide, sorted by cell, and every atom's candidates are
the atoms of its 3^d neighbouring cells (all atoms along a direction with fewer than three
cells), taken a block of rows at a time (``lax.map``): memory stays bounded by the block, not
by N × 27 × the cell occupancy as in jax-md's Dense search (19 GB at 10⁶ EAM atoms), and the
list is ``(N, M)`` int32 with no N × M product in an index (jax-md's Sparse format overflows
int32 near 10⁶ EAM atoms). Only indices come out of the search; energies use the true cell's
displacements.

Overflow never passes silently:

* :meth:`NeighborList.update` is jit-safe and sets :attr:`NeighborList.overflow` when
  an atom has more neighbours than the list's capacity, a cell holds more atoms than the
  cell capacity, or an atom left the padded search region;
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

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from . import _validate, domain
from ._precision import HIGHEST
from .cell import Cell

OVERFLOW_MESSAGE = (
    "neighbour list overflow: the list is too small for the current positions (or an atom left the "
    "padded search region of a free direction); call dmdjax.neighbors.refresh(neighbors, positions) "
    "outside jit to re-allocate it"
)


#: Candidate pairs (row-block rows × candidates per row) per block of the search (CPU; 16 × on
#: accelerators, where a block must fill the device).
SEARCH_BLOCK_CANDIDATES = 1 << 20
#: Below this many N × (candidates per atom), :func:`neighbor_list` searches once at the candidate
#: bound and cuts the list to its capacity; above it, it counts first and then fills.
SINGLE_PASS_SLOTS = 1 << 24


class NeighborList(eqx.Module):
    """A Dense neighbour list: ``idx[i, m]`` is the m-th neighbour of i, or N (padding).

    Attributes:
        idx: ``(N, M)`` int32 neighbour indices, padded with N.
        reference: ``(N, d)`` fractional search coordinates where the list was last built.
        exceeded: True when a search found more neighbours or cell occupants than the capacities.
        search_inverse: inverse of the search cell (rows), ``(d, d)``.
        origin: origin of the search cell, ``(d,)``, Å.
        out_of_range: True when an atom left the padded search region.
        pbc: periodic flags of the simulation cell.
        cutoff, skin: interaction cut-off and Verlet skin, Å. Periodic widths must be at least
            2 × cutoff (each pair interacts through one image); the skin may reach further.
        grid: cells of the search along each cell vector (static).
        cell_capacity: atoms a cell may hold (static).
        decomposition: the :class:`~dmdjax.domain.Decomposition` its rows are sharded over, or
            None (one device); set by :func:`dmdjax.domain.shard`. A sharded list also
            overflows when a neighbour leaves the adjacent slabs.
    """

    idx: Int[Array, "n m"]
    reference: Float[Array, "n d"]
    exceeded: Bool[Array, ""]
    search_inverse: Float[Array, "d d"]
    origin: Float[Array, " d"]
    out_of_range: Bool[Array, ""]
    pbc: tuple[bool, ...] = eqx.field(static=True)
    cutoff: float = eqx.field(static=True)
    skin: float = eqx.field(static=True)
    grid: tuple[int, ...] = eqx.field(static=True, default=())
    cell_capacity: int = eqx.field(static=True, default=0)
    decomposition: domain.Decomposition | None = eqx.field(static=True, default=None)

    @property
    def capacity(self) -> int:
        """Neighbour slots per atom (``idx.shape[1]``)."""
        return self.idx.shape[1]

    @property
    def overflow(self) -> Bool[Array, ""]:
        """True when the list cannot be trusted (see the module docstring)."""
        return self.exceeded | self.out_of_range

    @property
    def search_range(self) -> float:
        """``cutoff + skin``, Å: the list holds every pair this close where it was built."""
        return self.cutoff + self.skin

    @property
    def nbytes(self) -> int:
        """Bytes of the list's arrays (its index table dominates: 4 N M)."""
        return sum(int(x.size) * x.dtype.itemsize for x in (self.idx, self.reference))

    def max_displacement(self, positions: Float[Array, "n d"]) -> Float[Array, ""]:
        """Largest distance (Å) an atom moved since the list was (re)built (jit-safe).

        Periodic directions use the minimum image; an atom that left the padded search
        region of a free direction counts as infinitely far.
        """
        fractional, outside = self._fractional(positions)
        delta = _wrap(fractional - self.reference.astype(fractional.dtype), self.pbc)
        vectors = jnp.linalg.inv(self.search_inverse.astype(positions.dtype))
        moved = jnp.max(jnp.linalg.norm(_to_cartesian(delta, vectors), axis=-1))
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
        return wrapped, jnp.any(outside)

    def _free_margin(self) -> Array:
        # Fraction of each search-cell width taken by one search range (|b_k| = 1/width_k).
        return (self.cutoff + self.skin) * jnp.linalg.norm(self.search_inverse, axis=0)

    def update(self, positions: Float[Array, "n d"], trigger: float = 0.5) -> "NeighborList":
        """Update for new positions (jit-safe): searched again, with the same capacities, when an
        atom moved more than ``trigger`` × skin since the last search (0.5: the last moment the
        list is still exact; less to search ahead of that)."""
        fractional, outside = self._fractional(positions)
        delta = _wrap(fractional - self.reference.astype(fractional.dtype), self.pbc)
        vectors = jnp.linalg.inv(self.search_inverse.astype(positions.dtype))
        moved = jnp.max(jnp.linalg.norm(_to_cartesian(delta, vectors), axis=-1))

        def search(_):
            arguments = (self.search_range, self.pbc, self.grid, self.cell_capacity, self.capacity)
            if self.decomposition is None:
                idx, counts, occupancy = _search(fractional, vectors, *arguments)
            else:
                idx, counts, occupancy = _sharded_search(self.decomposition, fractional, vectors, *arguments)
            exceeded = (jnp.max(counts) > self.capacity) | (occupancy > self.cell_capacity)
            if self.decomposition is not None:
                exceeded = exceeded | jnp.any(domain.outside_halo(idx, self.decomposition.n_shards,
                                                                  self.decomposition.halo))
            return idx, fractional.astype(self.reference.dtype), exceeded

        def keep(_):
            return self.idx, self.reference, jnp.asarray(False)

        idx, reference, exceeded = jax.lax.cond(moved > trigger * self.skin, search, keep, None)
        return eqx.tree_at(lambda nl: (nl.idx, nl.reference, nl.exceeded, nl.out_of_range), self,
                           (idx, reference, self.exceeded | exceeded, self.out_of_range | outside))


def _wrap(delta, pbc):
    periodic = jnp.asarray(pbc)
    return jnp.where(periodic, delta - jnp.round(delta), delta)


def _to_cartesian(fractional, vectors):
    return sum(fractional[..., k:k + 1] * vectors[k] for k in range(fractional.shape[-1]))


def _cell_coordinates(fractional, grid):
    size = jnp.asarray(grid, fractional.dtype)
    return jnp.clip(jnp.floor(fractional * size).astype(jnp.int32), 0, jnp.asarray(grid, jnp.int32) - 1)


def _stencil(grid) -> np.ndarray:
    """Offsets of the neighbouring cells: −1, 0, 1 along a direction with ≥ 3 cells, 0 otherwise."""
    axes = [(-1, 0, 1) if g >= 3 else (0,) for g in grid]
    return np.array(np.meshgrid(*axes, indexing="ij")).reshape(len(grid), -1).T


def _sharded_search(decomposition, fractional, vectors, search_range, pbc, grid, cell_capacity, capacity):
    """:func:`_search` with each device searching its own rows among all atoms' positions
    (all-gathered: N × d per device; the list's rows stay sharded)."""
    spec = jax.sharding.PartitionSpec(domain.AXIS)

    def local(own, vectors):
        everyone = jax.lax.all_gather(own, domain.AXIS, tiled=True)
        first = jax.lax.axis_index(domain.AXIS) * own.shape[0]
        idx, counts, occupancy = _search(everyone, vectors, search_range, pbc, grid, cell_capacity, capacity,
                                         rows=(first, own.shape[0]))
        return idx, counts, occupancy[None]

    idx, counts, occupancy = jax.shard_map(
        local, mesh=decomposition.mesh, in_specs=(spec, jax.sharding.PartitionSpec()), out_specs=(spec, spec, spec),
        check_vma=False)(fractional, vectors)
    return idx, counts, jnp.max(occupancy)


def _search(fractional, vectors, search_range, pbc, grid, cell_capacity, capacity, rows=None):
    """``(idx (R, M), neighbour counts (R,), largest cell occupancy)`` of every pair closer than
    ``search_range`` (Å), in row blocks over the 3^d neighbouring cells of each atom; for the R
    rows ``rows = (first, R)`` (default: all N)."""
    n, dim = fractional.shape
    first_row, n_rows = (0, n) if rows is None else rows
    coordinates = _cell_coordinates(fractional, grid)
    strides = np.cumprod((1,) + tuple(grid[:0:-1]))[::-1]  # row-major cell numbering
    cell = jnp.sum(coordinates * jnp.asarray(strides, jnp.int32), axis=-1)
    order = jnp.argsort(cell).astype(jnp.int32)
    sorted_cells = cell[order]
    n_cells = int(np.prod(grid))
    start = jnp.searchsorted(sorted_cells, jnp.arange(n_cells, dtype=jnp.int32), side="left").astype(jnp.int32)
    stop = jnp.searchsorted(sorted_cells, jnp.arange(n_cells, dtype=jnp.int32), side="right").astype(jnp.int32)
    occupancy = jnp.max(stop - start)
    stencil = jnp.asarray(_stencil(grid), jnp.int32)  # (K, d)
    grid_array = jnp.asarray(grid, jnp.int32)
    periodic = jnp.asarray(pbc)
    slots = jnp.arange(cell_capacity, dtype=jnp.int32)
    squared_range = jnp.asarray(search_range, fractional.dtype) ** 2

    def rows_of(rows):
        neighbor_cells = coordinates[rows][:, None, :] + stencil  # (B, K, d)
        inside = jnp.all(periodic | ((neighbor_cells >= 0) & (neighbor_cells < grid_array)), axis=-1)
        neighbor_cells = jnp.mod(neighbor_cells, grid_array)
        number = jnp.sum(neighbor_cells * jnp.asarray(strides, jnp.int32), axis=-1)  # (B, K)
        first, last = start[number], stop[number]
        position = first[..., None] + slots  # (B, K, C)
        valid = inside[..., None] & (position < last[..., None])
        candidate = jnp.where(valid, order[jnp.minimum(position, n - 1)], n).reshape(rows.shape[0], -1)
        delta = _wrap(jnp.take(fractional, candidate, axis=0, mode="fill", fill_value=0)
                      - fractional[rows][:, None, :], pbc)
        cartesian = _to_cartesian(delta, vectors.astype(fractional.dtype))
        close = (jnp.sum(cartesian * cartesian, axis=-1) < squared_range) & (candidate < n) \
            & (candidate != rows[:, None])
        count = jnp.sum(close, axis=1)
        slot = jnp.where(close, jnp.cumsum(close, axis=1) - 1, capacity)  # capacity: dropped
        table = jnp.full((rows.shape[0], capacity + 1), n, jnp.int32)
        table = table.at[jnp.arange(rows.shape[0])[:, None], jnp.minimum(slot, capacity)].set(candidate)
        return table[:, :capacity], count

    per_row = int(_stencil(grid).shape[0]) * cell_capacity
    candidates = SEARCH_BLOCK_CANDIDATES * (1 if jax.default_backend() == "cpu" else 16)
    block = int(max(1, min(n_rows, candidates // max(per_row, 1))))
    n_blocks = -(-n_rows // block)
    starts = first_row + jnp.minimum(jnp.arange(n_blocks) * block, n_rows - block)
    idx, counts = jax.lax.map(lambda start: rows_of(start + jnp.arange(block, dtype=jnp.int32)), starts)
    overlap = n_blocks * block - n_rows

    def join(x):
        head = x[:-1].reshape(((n_blocks - 1) * block,) + x.shape[2:])
        return jnp.concatenate([head, x[-1, overlap:]])

    return join(idx), join(counts), occupancy


_search_jit = jax.jit(_search, static_argnums=(2, 3, 4, 5, 6))
_update_jit = eqx.filter_jit(lambda neighbors, positions: neighbors.update(positions))


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
    decomposition: domain.Decomposition | None = None,
    shape_of: NeighborList | None = None,
) -> NeighborList:
    """Allocate a Dense neighbour list of all pairs closer than ``cutoff + skin``.

    Arguments:
        positions: ``(N, d)`` positions, Å.
        cell: the simulation :class:`~dmdjax.cell.Cell`.
        cutoff: interaction cut-off (e.g. ``potential.cutoff``), Å.
        skin: Verlet skin, Å; the list is searched again when an atom moves more than skin/2.
        capacity_multiplier: spare capacity over the current largest neighbour count (and
            cell occupancy).
        decomposition: shard the list's rows over these devices (:func:`dmdjax.domain.tag`;
            the atoms in :func:`dmdjax.domain.spatial_order`).
        shape_of: a list this one replaces: the new list keeps at least its capacity and cell
            capacity, and its cell grid along every direction where those cells are still a
            search range wide, so that it has the same shape (and static fields) whenever it
            can — functions compiled for the old list then run on the new one without a
            recompilation (what :func:`covering` and :func:`refresh` pass).

    Raises:
        ValueError: bad arguments, a periodic cell narrower than twice ``cutoff``, or (sharded)
            a neighbour beyond the adjacent slabs.
    """
    positions_np = _validate.host_array(positions)
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
    widths = 1.0 / np.linalg.norm(np.linalg.inv(vectors), axis=0)
    # Fewer than three cells along a direction: one cell (every atom a candidate there).
    grid = tuple(g if g >= 3 else 1 for g in (int(np.floor(w / search_range)) for w in widths))
    if shape_of is not None:
        if len(shape_of.grid) != len(grid):
            raise ValueError(f"shape_of is a {len(shape_of.grid)}-D list; these positions are {len(grid)}-D")
        # Fewer, wider cells are always a valid grid: keep the old count where its cells still fit
        # (both counts are 1 or >= 3, and so is their minimum).
        grid = tuple(map(min, shape_of.grid, grid))
    least_capacity, least_cell_capacity = (0, 0) if shape_of is None else (shape_of.capacity, shape_of.cell_capacity)
    dtype = positions.dtype if hasattr(positions, "dtype") else jnp.asarray(positions).dtype
    template = NeighborList(
        idx=jnp.zeros((positions_np.shape[0], 0), jnp.int32), reference=jnp.zeros(positions_np.shape, dtype),
        exceeded=jnp.asarray(False), search_inverse=jnp.asarray(np.linalg.inv(vectors), dtype=dtype),
        origin=jnp.asarray(origin, dtype=dtype), out_of_range=jnp.asarray(False), pbc=cell.pbc,
        cutoff=float(cutoff), skin=float(skin), grid=grid,
    )
    fractional, outside = template._fractional(jnp.asarray(positions_np, dtype=dtype))
    n = positions_np.shape[0]
    coordinates = np.asarray(_cell_coordinates(fractional, grid))
    numbers = np.ravel_multi_index(tuple(coordinates.T), grid) if n else np.zeros(0, int)
    occupancy = int(np.bincount(numbers, minlength=1).max()) if n else 1
    cell_capacity = max(int(np.ceil(occupancy * capacity_multiplier)), least_cell_capacity)
    cartesian_vectors = jnp.asarray(vectors, dtype)
    bound = int(_stencil(grid).shape[0]) * cell_capacity  # no atom has more candidates
    if n * bound <= SINGLE_PASS_SLOTS:
        # Small systems: one search at the bound, cut to the capacity (one compilation, not two).
        idx, counts, _ = _search_jit(fractional, cartesian_vectors, search_range, cell.pbc, grid, cell_capacity,
                                     bound)
        capacity = max(int(np.ceil(int(jnp.max(counts)) * capacity_multiplier)) if n else 0, least_capacity)
        idx = idx[:, :capacity] if capacity <= bound else jnp.pad(idx, ((0, 0), (0, capacity - bound)),
                                                                   constant_values=n)
    else:
        # Count first (capacity 0), then fill the list at the allocated capacity.
        _, counts, _ = _search_jit(fractional, cartesian_vectors, search_range, cell.pbc, grid, cell_capacity, 0)
        capacity = max(int(np.ceil(int(jnp.max(counts)) * capacity_multiplier)) if n else 0, least_capacity)
        idx, _, _ = _search_jit(fractional, cartesian_vectors, search_range, cell.pbc, grid, cell_capacity,
                                capacity)
    built = NeighborList(idx, fractional, jnp.asarray(False), template.search_inverse, template.origin, outside,
                         cell.pbc, float(cutoff), float(skin), grid, cell_capacity)
    return built if decomposition is None else domain.tag(built, decomposition)


def refresh(neighbors: NeighborList, positions: Float[Array, "n d"], cell: Cell,
            capacity_multiplier: float = 1.25) -> NeighborList:
    """Update ``neighbors`` for ``positions``; re-allocate (host side) when it overflows."""
    updated = _update_jit(neighbors, positions)  # compiled once per list shape (eager: op by op)
    if bool(updated.overflow):
        return neighbor_list(positions, cell, neighbors.cutoff, skin=neighbors.skin,
                             capacity_multiplier=capacity_multiplier, decomposition=neighbors.decomposition,
                             shape_of=neighbors)
    return updated


def covering(neighbors: NeighborList, positions: Float[Array, "n d"], cell: Cell, interaction_range: float,
             *, margin: float = 0.0) -> NeighborList:
    """``neighbors`` if it still covers ``interaction_range`` (Å) at ``positions`` and has not
    overflowed; otherwise a list rebuilt there (host side) with the same skin,
    ``cutoff = max(neighbors.cutoff, interaction_range + margin)`` and at least the old list's
    capacities (``shape_of``: the same shape when the cut-off did not grow)."""
    interaction_range = float(interaction_range)
    if not bool(neighbors.overflow) and float(neighbors.reach(positions)) >= interaction_range:
        return neighbors
    cutoff = max(neighbors.cutoff, interaction_range + margin)
    return neighbor_list(positions, cell, cell.within_minimum_image(cutoff, interaction_range), skin=neighbors.skin,
                         decomposition=neighbors.decomposition, shape_of=neighbors)


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
    """Return ``value``, raising (also under jit) if ``neighbors`` overflowed. The check rides on
    a scalar added to ``value`` (+0): an ``error_if`` on an N-sized array would route it through
    one device when it is sharded."""
    zero = eqx.error_if(jnp.zeros((), jnp.result_type(value)), neighbors.overflow, OVERFLOW_MESSAGE)
    return value + zero
