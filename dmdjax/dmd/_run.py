r"""The host driver: :func:`solve`'s intervals one at a time, with files, checkpoints,
neighbour-list rebuilds, progress and errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .. import _validate, kinetics
from ..free_energy import VGFreeEnergy
from ..neighbors import NeighborList, neighbor_list
from ..progress import Progress
from ..relax import check_method, hessian_colouring
from ..state import DMDState
from ._solve import DMDError, advance, failure_message, make_options
from ._trajectory import Trajectory, load_trajectory, stack


def run(
    vg: VGFreeEnergy,
    state: DMDState,
    neighbors: NeighborList,
    law: kinetics.KineticLaw,
    save_times,
    *,
    kinetic_cutoff: float,
    solver=None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    stepsize_controller=None,
    dt0: float | None = None,
    max_steps: int = 4096,
    tolerance: float | None = None,
    relax_method: str = "lbfgs",
    relax_at: str = "rhs",
    adjoint=None,
    output: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Trajectory:
    """Integrate s(t) from ``save_times[0]`` through every later output time, on the host.

    The same intervals as :func:`~dmdjax.dmd.solve` (the same compiled interval function), run
    one at a time so that between them the state is checked, written and — where atoms moved
    or k softened — the neighbour list rebuilt; the trajectory equals :func:`solve`'s where no
    list had to be rebuilt.

    Arguments:
        vg, state, law, save_times, solver, rtol, atol, stepsize_controller, dt0, max_steps,
            tolerance, relax_method, relax_at, adjoint: as in :func:`~dmdjax.dmd.solve`.
            Passing a recorded state of a trajectory (``trajectory.state[i]``) resumes that run
            exactly: its relaxation is already converged.
        neighbors: the starting neighbour list (its skin is kept). The run rebuilds it at an
            output state when less than half the skin is left for the free energy's
            interaction range, and redoes an interval whose relaxation left it; the rebuilds
            are recorded in ``Trajectory.neighbor_builds`` (``docs/reliability.md``).
        kinetic_cutoff: bond length for exchanges, Å (the bond graph is built at the initial
            positions).
        output: an ``.npz`` path. The trajectory is rewritten there (atomically) after every
            output interval, so it is also the checkpoint; see :meth:`Trajectory.save`.
        resume: continue the run recorded in ``output`` (same parameters, its times a
            prefix of ``save_times``) from its last state; the result equals the
            uninterrupted run bit for bit (same device and dtype).
        overwrite: allow replacing an existing ``output`` (otherwise an error).
        progress: show a progress bar over output intervals.

    Raises:
        DMDError: naming the time and sites, when s leaves (−1, 1), a value is non-finite,
            or the solver fails; the trajectory recorded so far is attached as
            ``error.trajectory`` (and is in ``output``).
        FileExistsError: ``output`` exists and neither ``resume`` nor ``overwrite`` is set.
        ValueError: bad ``save_times``, or a checkpoint that does not match this run.
    """
    times = np.asarray(save_times, dtype=float)
    if times.ndim != 1 or times.size < 2 or np.any(np.diff(times) <= 0) or not np.all(np.isfinite(times)):
        raise ValueError(f"save_times must be finite and increasing with at least two entries; got {times.tolist()}")
    kinetics.check_law(vg, law)
    check_method(relax_method)
    vg.check(state, neighbors)
    dtype = state.dtype
    options = make_options(dtype, solver=solver, rtol=rtol, atol=atol, stepsize_controller=stepsize_controller,
                           dt0=dt0, max_steps=max_steps, tolerance=tolerance, relax_at=relax_at)
    parameters = {**kinetics.describe_law(law),
                  "temperature": float(vg.temperature), "kinetic_cutoff": kinetic_cutoff,
                  "quadrature": vg.quadrature, "nodes": vg.nodes, "solver": type(options.solver).__name__,
                  "stepsize_controller": type(options.controller).__name__, "rtol": rtol, "atol": atol,
                  "dt0": None if dt0 is None else float(dt0), "max_steps": max_steps, "relax_method": relax_method,
                  "relax_at": relax_at, "n_sites": int(state.n_sites), "dtype": jnp.dtype(dtype).name}
    states, energies, builds = [], [], []
    if output is not None and Path(output).exists():
        if resume:
            checkpoint = load_trajectory(output)
            _check_checkpoint(checkpoint, parameters, times, output)
            states = [checkpoint.state[i] for i in range(checkpoint.time.shape[0])]
            energies = list(checkpoint.free_energy)
            builds = list(checkpoint.neighbor_builds)
        elif not overwrite:
            raise FileExistsError(f"{str(output)!r} exists: pass resume=True to continue it or overwrite=True")
    elif resume:
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {str(output)!r}")
    graph = kinetics.bond_graph(state.positions, vg.cell, neighbors, kinetic_cutoff,
                                pinned_species=vg.pinned_species)
    if builds:  # the list the interrupted run was using
        index, cutoff = builds[-1]
        at = state.positions if index < 0 else states[index].positions
        neighbors = neighbor_list(at, vg.cell, cutoff, skin=neighbors.skin, decomposition=neighbors.decomposition)
    lists = _RunNeighbors(vg, neighbors, builds, relax_method)
    values = kinetics.law_parameters(law, dtype)

    def write():
        if output is not None:
            stack(times[: len(states)], states, energies, parameters, builds).save(output)

    if not states:  # relax the initial state (a zero-length interval: the same compiled function)
        t0 = jnp.asarray(times[0], dtype)
        lists.prepare(state, -1)
        first, f0, ok, _ = lists.advance(values, graph, state, t0, t0, options, adjoint, -1)
        if not bool(ok):
            raise DMDError("DMD could not start: the relaxation of (X, k) at the initial s did not converge "
                           "(check the structure, or loosen tolerance)")
        states, energies = [first], [f0]
        write()
    bar = Progress(times.size - len(states), f"DMD {type(law).__name__}", "interval", enabled=progress)
    for index in range(len(states), times.size):
        start = states[-1]
        lists.prepare(start, len(states) - 1)
        end, free_energy, ok, steps = lists.advance(values, graph, start, jnp.asarray(times[index - 1], dtype),
                                                    jnp.asarray(times[index], dtype), options, adjoint,
                                                    len(states) - 1)
        if not bool(ok):
            error = DMDError(failure_message(times, index, end.order_parameter, vg.pinned_species, steps, max_steps)
                             + (f" and is saved in {str(output)!r}" if output is not None else ""))
            error.trajectory = stack(times[: len(states)], states, energies, parameters, builds)
            bar.close()
            raise error
        states.append(end)
        energies.append(free_energy)
        write()
        bar.update(1, t=times[index], F=float(free_energy))
    bar.close()
    return stack(times, states, energies, parameters, builds)


class _RunNeighbors:
    """The neighbour list of a :func:`run` (host side): rebuilt at a recorded state when the
    atoms moved or k softened so far that less than half the skin is left (Verlet's rule for
    the VG interaction range), or when an interval failed because its relaxation left the
    list's reach (then with room for the distance it moved, and the interval is redone).
    Every rebuild is logged in ``builds`` as (record index, cut-off), which makes a resumed
    run rebuild the same lists."""

    def __init__(self, vg, neighbors, builds, relax_method):
        self.vg, self.neighbors, self.builds, self.relax_method = vg, neighbors, builds, relax_method
        self.colouring = self._colouring()

    def _colouring(self):
        return hessian_colouring(self.vg, self.neighbors) if self.relax_method == "newton" else None

    def _rebuild(self, positions, cutoff, index):
        cutoff = float(cutoff)
        self.neighbors = neighbor_list(positions, self.vg.cell, cutoff, skin=self.neighbors.skin,
                                       decomposition=self.neighbors.decomposition)
        self.colouring = self._colouring()
        self.builds.append((int(index), cutoff))

    def prepare(self, state: DMDState, index):
        vg, neighbors = self.vg, self.neighbors
        needed = float(vg.interaction_range(state.stiffness))
        if bool(neighbors.overflow) or float(neighbors.reach(state.positions)) < needed + 0.5 * neighbors.skin:
            margin = 0.25 * float(vg.reach(state.stiffness))
            wanted = vg.cell.within_minimum_image(max(neighbors.cutoff, needed + margin), needed)
            self._rebuild(state.positions, wanted, index)

    def advance(self, values, graph, start: DMDState, t0, t1, options, adjoint, index):
        run = lambda: advance(self.vg, values, graph, self.neighbors, start, t0, t1,
                              _with_colouring(options, self.colouring), adjoint)
        result = run()
        end, _, ok, _ = result
        if bool(ok) or not np.all(np.isfinite(_validate.host_array(end.positions))):
            return result
        if float(self.vg.neighbor_fault(end, self.neighbors)) <= 0:
            return result  # not the list's doing
        # Room for what this interval moved the atoms (both ends of a pair) and softened k.
        moved = float(jnp.max(jnp.linalg.norm(self.vg.cell.displacement(end.positions, start.positions), axis=-1)))
        needed = float(self.vg.interaction_range(jnp.minimum(start.stiffness, end.stiffness)))
        wanted = max(self.neighbors.cutoff, needed + 2.0 * moved + 0.25 * self.neighbors.skin)
        self._rebuild(start.positions, self.vg.cell.within_minimum_image(wanted, needed), index)
        return run()


def _with_colouring(options, colouring):
    return dataclasses.replace(options, colouring=colouring)


def _check_checkpoint(checkpoint: Trajectory, parameters, times, output):
    saved = dict(checkpoint.parameters)
    if saved != json.loads(json.dumps(parameters)):
        changed = sorted(k for k in set(saved) | set(parameters) if saved.get(k) != parameters.get(k))
        raise ValueError(f"checkpoint {str(output)!r} was written with different parameters: {changed}")
    n = checkpoint.time.shape[0]
    saved_times = np.asarray(checkpoint.time)  # float32 where the run was (JAX without x64)
    if n > times.size or not np.array_equal(saved_times, times[:n].astype(saved_times.dtype)):
        raise ValueError(f"checkpoint {str(output)!r} has times {saved_times.tolist()}, "
                         f"not a prefix of save_times")
