r"""Training and evaluating the SB-SAM score network (optax; DESIGN.md §7).

A :class:`Dataset` holds full-system samples at many conditions (F, T): the inner displacements
u_X, the conditions, and the force-matching target −β∇_X V(X, Y). :func:`fit` minimises one of
the losses of :mod:`~dmdjax.sbsam.losses` (``"implicit"``, ``"hutchinson"``, ``"sliced"``,
``"denoising"``, ``"force"``) over minibatches drawn with replacement, in thermal units (see
:mod:`~dmdjax.sbsam.model`); :func:`relative_score_error` measures √(E‖S_θ − S*‖² / E‖S*‖²)
against a known score.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import losses
from . import model as models
from .model import thermal_length
from ..progress import track

LOSSES = ("implicit", "hutchinson", "sliced", "denoising", "force")


class Dataset(NamedTuple):
    """Samples: ``displacement`` (n, m, d) Å, ``deformation`` (n, d, d), ``temperature`` (n,) K,
    ``force_target`` (n, m, d) 1/Å (−β∇_X V of the full system)."""

    displacement: jax.Array
    deformation: jax.Array
    temperature: jax.Array
    force_target: jax.Array


def sample_loss(kind: str, model, params, sample, key, stiffness_scale: float, sigmas=None):
    """The loss ``kind`` of one sample (u, F, T, f), in thermal units."""
    displacement, deformation, temperature, target = sample
    length = thermal_length(temperature, stiffness_scale).astype(displacement.dtype)
    x = jnp.reshape(displacement, (-1,)) / length

    def score(y):
        return model.apply(params, y, deformation, temperature)

    if kind == "implicit":
        return losses.implicit_score_matching(score, x)
    if kind == "hutchinson":
        return losses.hutchinson_score_matching(score, x, key)
    if kind == "sliced":
        return losses.sliced_score_matching(score, x, key)
    if kind == "force":
        return losses.force_matching(score, x, jnp.reshape(target, (-1,)) * length)
    if kind == "denoising":
        return losses.denoising_score_matching(lambda y, s: model.apply(params, y, deformation, temperature, s), x,
                                               key, sigmas)
    raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")


def fit(model, params, data: Dataset, kind: str, *, key, steps: int = 2000, batch_size: int = 256,
        learning_rate: float = 1e-3, stiffness_scale: float = 1.0, sigmas=None, progress: bool = False,
        log_every: int = 100):
    """Minimise the mean loss ``kind`` over minibatches of ``data`` with Adam (cosine decay).

    Returns ``(params, history)``, history the minibatch loss every ``log_every`` steps.

    Raises:
        ValueError: an unknown loss, ``denoising`` without ``sigmas``, or a bad size.
    """
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")
    if kind == "denoising" and sigmas is None:
        raise ValueError("the denoising loss needs sigmas (noise levels in thermal units)")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1; got {steps}, {batch_size}")
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    state = optimizer.init(params)
    n = data.displacement.shape[0]

    def batch_loss(p, batch_key):
        pick_key, loss_key = jax.random.split(batch_key)
        index = jax.random.randint(pick_key, (batch_size,), 0, n)
        batch = jax.tree_util.tree_map(lambda a: a[index], tuple(data))
        keys = jax.random.split(loss_key, batch_size)
        return jnp.mean(jax.vmap(lambda s, k: sample_loss(kind, model, p, s, k, stiffness_scale, sigmas))(batch, keys))

    @jax.jit
    def step(p, s, batch_key):
        value, gradient = jax.value_and_grad(batch_loss)(p, batch_key)
        updates, s = optimizer.update(gradient, s, p)
        return optax.apply_updates(p, updates), s, value

    history = []
    iterator = range(steps)
    iterator = track(iterator, f"score ({kind})", "step", enabled=progress)
    for index, step_key in zip(iterator, jax.random.split(key, steps)):
        params, state, value = step(params, state, step_key)
        if index % log_every == 0 or index == steps - 1:
            history.append((index, float(value)))
    return params, history


def relative_score_error(score: Callable, exact: Callable, displacements) -> float:
    """√(Σ‖S_θ(u) − S*(u)‖² / Σ‖S*(u)‖²) over ``displacements`` (n, m, d)."""
    learned, true = jax.vmap(score)(displacements), jax.vmap(exact)(displacements)
    return float(jnp.sqrt(jnp.sum((learned - true) ** 2) / jnp.sum(true**2)))


def save_checkpoint(path: str | os.PathLike, model, params, metadata=None):
    """Write ``model`` (its class and fields), ``params`` and JSON-able ``metadata`` to ``path``
    (msgpack, atomically: an existing file is replaced only once the new one is complete)."""
    import dataclasses

    from flax import serialization

    from ..io import atomic_path

    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.name not in ("parent", "name")}
    payload = {"model": type(model).__name__, "fields": json.dumps(fields), "metadata": json.dumps(metadata or {}),
               "params": serialization.to_state_dict(params)}
    with atomic_path(path) as tmp:
        tmp.write_bytes(serialization.msgpack_serialize(payload))


def load_checkpoint(path: str | os.PathLike):
    """Read a checkpoint of :func:`save_checkpoint`: ``(model, params, metadata)``.

    Raises:
        ValueError: the file is not such a checkpoint.
    """
    from flax import serialization

    try:
        payload = serialization.msgpack_restore(Path(path).read_bytes())
        kind, fields = payload["model"], json.loads(payload["fields"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is not an SB-SAM checkpoint ({error})") from None
    if kind not in ("ScoreMLP", "PairScore", "BoundaryCorrection", "CubicCorrection"):
        raise ValueError(f"{str(path)!r}: unknown model class {kind!r}")
    fields = {k: _tuples(v) for k, v in fields.items()}
    params = jax.tree_util.tree_map(jnp.asarray, payload["params"])
    return getattr(models, kind)(**fields), params, json.loads(payload["metadata"])


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
