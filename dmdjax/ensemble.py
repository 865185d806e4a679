r"""Ensembles: independent runs stacked on a leading batch axis, sharded over devices (DESIGN.md §8).

A batch of runs is one ``jax.vmap`` of a pure simulator (:func:`dmdjax.dmd.solve`, the
sampler's ``step``) over pytrees whose leaves carry a leading axis of length B. With several
devices the batch axis is split over them by ``jax.sharding`` — XLA partitions the vmapped
computation; no scheduler of our own. Across hosts, call ``jax.distributed.initialize()``
first: ``jax.devices()`` then lists every host's devices and the same code runs.

Example (B temperatures of one DMD run)::

    vgs = ensemble.stack([eqx.tree_at(lambda v: v.temperature, vg, t) for t in temperatures])
    sharding = ensemble.batch_sharding(len(temperatures))
    if sharding is not None:
        vgs = jax.device_put(vgs, sharding)
    s = eqx.filter_jit(jax.vmap(lambda v: dmd.solve(v, state, nbrs, law, graph, times).order_parameter))(vgs)
"""

from __future__ import annotations

from typing import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np


def stack(trees: Sequence) -> object:
    """One pytree whose array leaves are the ``trees``' leaves stacked on a new leading axis.

    The trees must have the same structure and the same static (non-array) parts, e.g. the
    same potential form with different parameters.

    Raises:
        ValueError: no trees, or trees that differ in structure or static parts.
    """
    if not trees:
        raise ValueError("stack needs at least one tree")
    dynamic, static = zip(*(eqx.partition(tree, eqx.is_array_like) for tree in trees))
    structure = jax.tree.structure(dynamic[0])
    for index, (d, s) in enumerate(zip(dynamic[1:], static[1:]), start=1):
        if jax.tree.structure(d) != structure or not eqx.tree_equal(s, static[0]):
            raise ValueError(f"tree {index} differs from tree 0 in structure or static fields: it cannot join a batch")
    return eqx.combine(jax.tree.map(lambda *leaves: jnp.stack([jnp.asarray(x) for x in leaves]), *dynamic), static[0])


def batch_sharding(batch_size: int, axis_name: str = "batch") -> jax.sharding.NamedSharding | None:
    """A sharding that splits a leading axis of ``batch_size`` evenly over all devices.

    ``None`` with a single device, or when ``batch_size`` is not a multiple of the device
    count (the batch then runs unsharded on the default device).
    """
    devices = jax.devices()
    if len(devices) < 2 or batch_size % len(devices):
        return None
    mesh = jax.sharding.Mesh(np.asarray(devices), (axis_name,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))
