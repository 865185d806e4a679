"""Input validation at the public boundary (host side, concrete values only).

Each check raises ``ValueError`` naming the offending argument and value. Checks are
skipped for traced values (inside ``jit``/``vmap``), where callers use
``equinox.error_if`` instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def is_concrete(x) -> bool:
    """True when ``x`` holds concrete values that can be checked on the host."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(x))


def host_array(x, dtype=None) -> np.ndarray:
    """``x`` as a NumPy array on this host; a :class:`jax.Array` spread over other processes'
    devices (a multi-host sharded state) is gathered first."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x, dtype=dtype)


def on_host(x) -> bool:
    """True when ``x`` is concrete *and* no ``jit`` is tracing: host-side loops, Python control
    flow on values and nested compiled calls are then allowed. (Inside ``jit`` even constants
    become tracers once operated on, so concrete arguments alone do not make a host call.)"""
    return is_concrete(x) and not isinstance(jnp.zeros(()) * 1, jax.core.Tracer)


def first_bad(values: np.ndarray, bad: np.ndarray) -> str:
    idx = np.argwhere(bad)[0]
    where = "" if values.ndim == 0 else f" at index {tuple(int(i) for i in idx)}"
    return f"{values[tuple(idx)].item()!r}{where}"


def positive(value, name: str, unit: str) -> None:
    """Finite and strictly positive."""
    if not is_concrete(value):
        return
    v = host_array(value, dtype=float)
    bad = ~np.isfinite(v) | (v <= 0)
    if np.any(bad):
        raise ValueError(f"{name} must be finite and > 0{unit}; got {first_bad(v, bad)}")


def temperature(value, name: str = "temperature") -> None:
    positive(value, name, " K")


def order_parameter(value, name: str = "order_parameter") -> None:
    """Species order parameters s must lie strictly inside (-1, 1)."""
    if not is_concrete(value):
        return
    v = host_array(value, dtype=float)
    bad = ~np.isfinite(v) | (v <= -1) | (v >= 1)
    if np.any(bad):
        raise ValueError(
            f"{name} must lie strictly inside (-1, 1); got {first_bad(v, bad)} "
            "(use pinned species for sites that are exactly one species)"
        )


def stiffness(value, name: str = "stiffness") -> None:
    positive(value, name, " (eV/Å²)")


def finite(value, name: str) -> None:
    if not is_concrete(value):
        return
    v = host_array(value)
    bad = ~np.isfinite(v)
    if np.any(bad):
        raise ValueError(f"{name} must be finite; got {first_bad(v, bad)}")


def shape(value, expected: tuple, name: str) -> None:
    """``expected`` holds ints or None (any size) per axis."""
    got = tuple(np.shape(value))
    if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
        parts = ["*" if e is None else str(e) for e in expected]
        want = f"({parts[0]},)" if len(parts) == 1 else "(" + ", ".join(parts) + ")"
        raise ValueError(f"{name} must have shape {want}; got {got}")
