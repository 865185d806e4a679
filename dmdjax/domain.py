r"""Atoms sharded over a 1-D device mesh: spatial slabs with a halo exchange (DESIGN.md §1–2 sums).

One system larger than a device holds is split into P *slabs* of N/P consecutive atoms: the
atoms are first put in spatial order along one cell direction (:func:`spatial_order`), so
shard p holds the p-th slab. The rows of the full neighbour list and every per-atom array
(:class:`~dmdjax.DMDState`, species weights, pinned masks) are sharded along the atom axis
(:func:`shard`). A row's neighbours must then lie in its own slab or the two adjacent ones
(each slab at least one search range ``cutoff + skin`` thick), and every pair sum of
:mod:`dmdjax.pair_sums` runs as a ``shard_map``: each device receives, by ``ppermute``, the
rows of its two neighbouring slabs next to its faces — atoms are sorted along the slab
direction, so these are the previous slab's last and the next slab's first
:attr:`Decomposition.halo` rows (a halo exchange of 2 × halo atoms' values per exchanged
array: it depends on the cross-section, not on P) — evaluates its own rows, and keeps its
rows' results. An EAM gradient exchanges twice (the
positions, variances and weights; then the embedding derivatives h_j = w_j F'(ρ_j)).
Everything else — the entropy terms, L-BFGS vector updates, the DMD right-hand sides — is
elementwise on the global, sharded arrays, partitioned by XLA. Results do not depend on P:
every row sums the same neighbours in the same order; only the final sums of site terms are
reduced in another order (~1e-16 relative).

A list whose neighbours left the adjacent slabs (atoms that moved further than a slab's
thickness minus the search range, or slabs thinner than the range) is *overflowed*
(:attr:`dmdjax.neighbors.NeighborList.overflow`): energies raise instead of dropping pairs.

Multi-host: call ``jax.distributed.initialize()`` first (``docs/scaling.md``); the mesh then
spans the devices of every process and the same code runs in each process.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, Bool, Int

from ._validate import host_array

#: The mesh axis the atoms are sharded along.
AXIS = "atoms"


class Decomposition(eqx.Module):
    """A 1-D mesh of devices the atoms are split over, in slabs (module docstring).

    Attributes:
        mesh: a :class:`jax.sharding.Mesh` with the one axis :data:`AXIS`.
        halo: rows each device receives from either neighbouring slab — the last ``halo`` rows
            of the previous slab and the first ``halo`` of the next (atoms are sorted along the
            slab direction, so these are the ones near the faces) — or None for whole slabs.
            Set by :func:`tag` from the list: the deepest row any pair reaches, plus a quarter.
    """

    mesh: Mesh = eqx.field(static=True)
    halo: int | None = eqx.field(static=True, default=None)

    @property
    def n_shards(self) -> int:
        """P, the number of devices (slabs)."""
        return int(self.mesh.devices.size)

    @property
    def sharding(self) -> NamedSharding:
        """Leading (atom) axis split over the devices."""
        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        """The same value on every device."""
        return NamedSharding(self.mesh, PartitionSpec())

    def rows(self, n: int) -> int:
        """Halo rows per side for N atoms (whole slabs when :attr:`halo` is None)."""
        size = n // self.n_shards
        return size if self.halo is None else min(self.halo, size)

    def check_size(self, n: int) -> None:
        """``ValueError`` unless N is a positive multiple of P."""
        if n <= 0 or n % self.n_shards:
            raise ValueError(f"an atom-sharded system needs N divisible by the number of devices: N = {n}, "
                             f"devices = {self.n_shards}; use a multiple of {self.n_shards} atoms or fewer devices")


def decomposition(devices=None) -> Decomposition:
    """A :class:`Decomposition` over ``devices``: a sequence of devices, a count (the first of
    ``jax.devices()``, which spans every process after ``jax.distributed.initialize``), or None
    (all of them)."""
    available = jax.devices()
    if devices is None:
        chosen = available
    elif isinstance(devices, (int, np.integer)):
        if not 1 <= int(devices) <= len(available):
            raise ValueError(f"devices must be between 1 and the {len(available)} visible devices; got {devices}")
        chosen = available[:int(devices)]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices is empty")
    return Decomposition(Mesh(np.asarray(chosen), (AXIS,)))


def _slab_direction(positions: np.ndarray, cell) -> tuple[int, float]:
    """The cell direction with the largest extent (periodic: the width; free: the atoms' span)
    and that extent, Å."""
    vectors = np.asarray(cell.vectors, dtype=float)
    inverse = np.linalg.inv(vectors)
    extents = [1.0 / np.linalg.norm(inverse[:, k]) if periodic else float(np.ptp(positions @ (v / np.linalg.norm(v))))
               for k, (v, periodic) in enumerate(zip(vectors, cell.pbc))]
    direction = int(np.argmax(extents))
    return direction, extents[direction]


def spatial_order(positions, cell, n_shards: int, direction: int | None = None) -> np.ndarray:
    """A permutation putting the atoms in slabs along one cell direction: ``positions[order]``
    has the atoms of slab p at rows [pN/P, (p+1)N/P). Host side.

    Arguments:
        positions: ``(N, d)`` Å. cell: the :class:`~dmdjax.cell.Cell`. n_shards: P.
        direction: the cell vector to cut across (default: the widest, so slabs are thickest).
    """
    x = np.asarray(positions, dtype=float)
    fractional = x @ np.linalg.inv(np.asarray(cell.vectors, dtype=float))
    if direction is None:
        direction = _slab_direction(x, cell)[0]
    coordinate = fractional[:, direction]
    if cell.pbc[direction]:
        coordinate = coordinate - np.floor(coordinate)
    # Within a slab, order by the other directions too (rows of a block share neighbours).
    keys = [fractional[:, k] for k in reversed(range(x.shape[1])) if k != direction] + [coordinate]
    return np.lexsort(keys)


def plan(positions, cell, search_range: float, devices=None) -> tuple[Decomposition | None, np.ndarray]:
    """The most devices, up to ``devices`` (default: every visible one), one system can be split
    over: P divides N and each slab is at least ``search_range`` (Å) thick; with the
    :func:`spatial_order` for it. ``(None, arange(N))`` when that is one device. Host side."""
    x = np.asarray(positions, dtype=float)
    n = x.shape[0]
    limit = len(jax.devices()) if devices is None else int(devices)
    if limit < 1:
        raise ValueError(f"devices must be >= 1; got {devices!r}")
    _, extent = _slab_direction(x, cell)
    for p in range(min(limit, len(jax.devices()), n), 1, -1):
        if n % p == 0 and extent / p >= search_range:
            return decomposition(p), spatial_order(x, cell, p)
    return None, np.arange(n)


def shard(tree, decomposition: Decomposition, n: int | None = None):
    """Place ``tree`` (a :class:`~dmdjax.DMDState`, arrays, a free energy, a neighbour list...)
    on the mesh: arrays whose leading axis is N (the neighbour list's size) are split along it,
    everything else is replicated. A :class:`~dmdjax.neighbors.NeighborList` is also tagged with
    the decomposition, so every pair sum over it runs sharded (it is checked: its neighbours
    must lie in adjacent slabs). Host side; the atoms must already be in
    :func:`spatial_order`. ``n``: N, when the tree holds neither a list nor a state.
    """
    lists = [leaf for leaf in jax.tree.leaves(tree, is_leaf=_is_list) if _is_list(leaf)]
    if n is None and lists:
        n = lists[0].idx.shape[0]
    elif n is None and hasattr(tree, "n_sites"):
        n = tree.n_sites
    if n is None:
        raise ValueError("shard(tree, ...) needs a neighbour list or a DMDState in the tree, or n=N")
    decomposition.check_size(n)

    def place(x):
        if _is_list(x):
            already = x.decomposition is not None and x.decomposition.mesh == decomposition.mesh
            return x if already else tag(x, decomposition)
        if isinstance(x, (jax.Array, np.ndarray)) and np.ndim(x) >= 1 and np.shape(x)[0] == n:
            return jax.device_put(x, decomposition.sharding)
        if isinstance(x, (jax.Array, np.ndarray)):
            return jax.device_put(x, decomposition.replicated)
        return x

    return jax.tree.map(place, tree, is_leaf=_is_list)


def _is_list(x) -> bool:
    """A :class:`~dmdjax.neighbors.NeighborList` (which imports this module: recognised by its fields)."""
    return hasattr(x, "idx") and hasattr(x, "decomposition") and hasattr(x, "reference")


def tag(neighbors, decomposition: Decomposition | None):
    """``neighbors`` sharded by rows over ``decomposition`` and tagged with it, its halo sized to
    the list (None: untagged, on one device); ``ValueError`` when a pair reaches beyond the
    adjacent slabs. Host side."""
    if decomposition is None:
        return dataclasses.replace(jax.device_put(neighbors, jax.local_devices()[0]), decomposition=None)
    n = neighbors.idx.shape[0]
    decomposition.check_size(n)
    decomposition = dataclasses.replace(decomposition, halo=halo_rows(neighbors, decomposition.n_shards))
    placed = jax.tree.map(lambda x: jax.device_put(x, decomposition.sharding if np.ndim(x) >= 1
                                                   and x.shape[0] == n else decomposition.replicated), neighbors)
    return dataclasses.replace(placed, decomposition=decomposition)


def _pair_shards(idx: Array, n_shards: int):
    """Per listed slot: the neighbour's slab offset from the row's (mod P), its row within its
    slab, and the valid-slot mask."""
    n = idx.shape[0]
    size = n // n_shards
    row_shard = (jnp.arange(n, dtype=jnp.int32) // size)[:, None]
    return jnp.mod(idx // size - row_shard, n_shards), idx % size, idx < n


def halo_rows(neighbors, n_shards: int) -> int:
    """The halo :func:`tag` gives a list over ``n_shards`` slabs: the deepest row its pairs reach
    (:func:`halo_depth`) plus a quarter and 8 rows, at most a whole slab; ``ValueError`` when a
    pair reaches beyond the adjacent slabs. Host side."""
    n = neighbors.idx.shape[0]
    depth = halo_depth(neighbors.idx, n_shards)
    if depth < 0:
        raise ValueError(
            f"listed pairs reach beyond the adjacent slab: with {n_shards} slabs of {n // n_shards} atoms each slab "
            f"is thinner than the search range {neighbors.search_range:g} Å, or the atoms are not in "
            "dmdjax.domain.spatial_order; use fewer devices")
    return min(n // n_shards, int(np.ceil(1.25 * depth)) + 8) if n_shards > 1 else 0


def halo_depth(idx: Int[Array, "n m"], n_shards: int) -> int:
    """How many rows deep into a neighbouring slab the listed pairs reach (−1 when some reach
    beyond the adjacent slabs; 0 for one slab). Host side."""
    if n_shards == 1:
        return 0
    idx = host_array(idx)  # gathered from every process when it spans several
    size = idx.shape[0] // n_shards
    offset, within, valid = (np.asarray(a) for a in _pair_shards(jnp.asarray(idx), n_shards))
    previous = valid & (offset == n_shards - 1)
    following = valid & (offset == 1)
    if np.any(valid & (offset != 0) & ~previous & ~following):
        return -1
    from_previous = np.where(previous, size - within, 0)
    from_following = np.where(following, within + 1, 0)
    # Two slabs: the other one is both; it is reached from whichever face is nearer.
    depth = np.minimum(from_previous, np.where(following, from_following, size)) if n_shards == 2 \
        else np.maximum(from_previous, from_following)
    return int(depth.max(initial=0))


def outside_halo(idx: Int[Array, "n m"], n_shards: int, halo: int | None = None) -> Bool[Array, " n"]:
    """Per row: a listed neighbour outside its own slab and the ``halo`` rows of the two adjacent
    ones next to it (None: the whole adjacent slabs) — jit-safe."""
    if n_shards == 1:
        return jnp.zeros(idx.shape[0], bool)
    offset, within, valid = _pair_shards(idx, n_shards)
    size = idx.shape[0] // n_shards
    halo = size if halo is None else halo
    near = (offset == 0) | ((offset == n_shards - 1) & (within >= size - halo)) | ((offset == 1) & (within < halo))
    return jnp.any(valid & ~near, axis=1)


class View(eqx.Module):
    """One device's view inside a sharded pair sum: the extended arrays are [the previous slab's
    last ``halo`` rows, its own ``n_local`` rows, the next slab's first ``halo`` rows]; its rows
    start at ``offset`` = ``halo`` (one device: the arrays themselves)."""

    n_local: int = eqx.field(static=True)
    n_shards: int = eqx.field(static=True)
    halo: int = eqx.field(static=True, default=0)

    @property
    def offset(self) -> int:
        return 0 if self.n_shards == 1 else self.halo

    def extend(self, values: Array) -> Array:
        """The halo exchange: [previous slab's tail, own, next slab's head] along the atom axis."""
        if self.n_shards == 1:
            return values
        p, halo = self.n_shards, self.halo
        tail = jax.lax.ppermute(values[self.n_local - halo:], AXIS, [(i, (i + 1) % p) for i in range(p)])
        head = jax.lax.ppermute(values[:halo], AXIS, [(i, (i - 1) % p) for i in range(p)])
        return jnp.concatenate([tail, values, head], axis=0)

    def remap(self, idx: Int[Array, "b m"]) -> Int[Array, "b m"]:
        """Global neighbour indices (N = padding) → indices into the extended arrays (their length
        = padding); a neighbour outside the halo becomes padding (the list is then overflowed,
        :func:`outside_halo`)."""
        if self.n_shards == 1:
            return idx
        size, p, halo = self.n_local, self.n_shards, self.halo
        me = jax.lax.axis_index(AXIS)
        shard_of, within = idx // size, idx % size
        padding = size + 2 * halo
        from_previous = (shard_of == (me - 1) % p) & (within >= size - halo)
        from_following = (shard_of == (me + 1) % p) & (within < halo)
        local = jnp.where(shard_of == me, halo + within,
                          jnp.where(from_previous, within - (size - halo),
                                    jnp.where(from_following, halo + size + within, padding)))
        return jnp.where(idx >= size * p, padding, local).astype(idx.dtype)


def on_shards(kernel, decomposition: Decomposition | None, neighbor_idx, replicated, per_atom):
    """``kernel(view, neighbor_idx, replicated, per_atom)`` on every shard: ``neighbor_idx`` and the
    arrays of ``per_atom`` (leading axis N; None entries allowed) split by rows, ``replicated``
    (a pytree of parameters) on every device. The kernel returns per-row arrays (leading axis
    = its rows), concatenated back to N rows."""
    if decomposition is None:
        return kernel(View(neighbor_idx.shape[0], 1), neighbor_idx, replicated, per_atom)
    decomposition.check_size(neighbor_idx.shape[0])
    p = decomposition.n_shards
    atoms = PartitionSpec(AXIS)
    dynamic, static = eqx.partition(replicated, eqx.is_array)

    halo = decomposition.rows(neighbor_idx.shape[0])

    def local(idx, dynamic, per_atom):
        view = View(idx.shape[0], p, halo)
        return kernel(view, idx, eqx.combine(dynamic, static), per_atom)

    mapped = jax.shard_map(local, mesh=decomposition.mesh,
                           in_specs=(atoms, PartitionSpec(), atoms), out_specs=atoms, check_vma=False)
    return mapped(neighbor_idx, dynamic, per_atom)


def summed(reduce, values: Array, decomposition: Decomposition) -> Array:
    """``reduce(values)`` of each shard's rows, summed over the shards (``psum``): a sum of
    per-atom terms without gathering them."""
    return jax.shard_map(lambda v: jax.lax.psum(reduce(v), AXIS), mesh=decomposition.mesh,
                         in_specs=PartitionSpec(AXIS), out_specs=PartitionSpec())(values)
