"""The record of a DMD run and its ``.npz`` file format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .. import io
from ..state import DMDState, HoldsState


class Trajectory(HoldsState):
    """Recorded DMD states at the output times.

    Attributes:
        time: ``(T,)`` output times (unit of the kinetic law).
        state: the relaxed :class:`~dmdjax.DMDState` at each time, stacked: positions
            ``(T, N, d)`` Å, stiffness ``(T, N)`` eV/Å², order_parameter ``(T, N)``;
            ``trajectory.state[i]`` is the state at ``time[i]``.
        free_energy: ``(T,)`` F at each state, eV.
        parameters: a dict (static) of everything that defines the run.
        neighbor_builds: ``((index, cutoff), ...)``, where :func:`~dmdjax.dmd.run` rebuilt its
            neighbour list: at the positions of output ``index`` (−1: the initial, unrelaxed
            positions) with that cut-off (Å) — so a resumed run rebuilds the same list.

    ``order_parameter``, ``positions`` and ``stiffness`` are shortcuts for the fields of ``state``.
    """

    time: Float[Array, " t"]
    state: DMDState
    free_energy: Float[Array, " t"]
    parameters: dict = eqx.field(static=True)
    neighbor_builds: tuple = eqx.field(static=True, default=())




    def first(self, n: int) -> "Trajectory":
        """The first ``n`` outputs, as the file of a run stopped after them would hold them
        (with the neighbour-list rebuilds made before the last of them)."""
        if not 1 <= n <= self.time.shape[0]:
            raise ValueError(f"n must lie in [1, {self.time.shape[0]}]; got {n!r}")
        return Trajectory(self.time[:n], self.state[:n], self.free_energy[:n], self.parameters,
                          tuple(build for build in self.neighbor_builds if build[0] <= n - 2))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the run as ``.npz`` (atomically): arrays ``time``, ``order_parameter``,
        ``positions``, ``stiffness``, ``free_energy``, ``neighbor_builds`` and the JSON string
        ``parameters``."""
        arrays = {name: np.asarray(getattr(self, name)) for name in FIELDS}
        arrays["neighbor_builds"] = np.asarray(self.neighbor_builds, dtype=float).reshape(-1, 2)
        return io.save_npz(path, arrays, self.parameters)


#: The arrays of a trajectory file.
FIELDS = ("time", "order_parameter", "positions", "stiffness", "free_energy")


def load_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by :meth:`Trajectory.save` (or by ``run(..., output=...)``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it lacks one of the trajectory arrays, or is damaged.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trajectory file not found: {str(p)!r}")
    try:
        with np.load(p) as data:
            missing = [name for name in (*FIELDS, "parameters") if name not in data.files]
            if missing:
                raise ValueError(f"{str(p)!r} is not a dmdjax trajectory: missing {missing}")
            arrays = {name: np.asarray(data[name]) for name in FIELDS}
            parameters = json.loads(str(data["parameters"]))
            builds = np.asarray(data["neighbor_builds"]) if "neighbor_builds" in data.files else np.zeros((0, 2))
    except ValueError:
        raise
    except Exception as err:  # zipfile.BadZipFile, EOFError, OSError, json errors: a damaged file
        raise ValueError(f"trajectory {str(p)!r} is damaged or truncated and cannot be read "
                         f"({type(err).__name__}: {err})") from None
    times = arrays["time"]
    n = times.shape[0] if times.ndim == 1 else -1
    if n < 1 or any(a.shape[:1] != (n,) for a in arrays.values()) or not all(
            np.all(np.isfinite(a)) for a in arrays.values()):
        raise ValueError(f"trajectory {str(p)!r} is inconsistent: arrays {[a.shape for a in arrays.values()]} "
                         "(or non-finite values)")
    try:
        state = DMDState(*(jnp.asarray(arrays[name]) for name in ("positions", "stiffness", "order_parameter")))
    except ValueError as err:
        raise ValueError(f"trajectory {str(p)!r} holds an invalid state: {err}") from None
    return Trajectory(jnp.asarray(times), state, jnp.asarray(arrays["free_energy"]), parameters,
                      tuple((int(i), float(c)) for i, c in builds.reshape(-1, 2)))


def stack(times, states, free_energies, parameters, builds=()) -> Trajectory:
    """A :class:`Trajectory` from per-time states and free energies. Stacked on the host: a
    device stack would compile once per trajectory length."""
    state = jax.tree_util.tree_map(lambda *leaves: jax.device_put(np.stack([np.asarray(a) for a in leaves])),
                                   *states)
    free_energy = jax.device_put(np.stack([np.asarray(f) for f in free_energies]))
    return Trajectory(jax.device_put(np.asarray(times)), state, free_energy, parameters, tuple(builds))
