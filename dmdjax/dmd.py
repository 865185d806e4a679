r"""The DMD time integrator: species kinetics with quasistatic (X, k) (DESIGN.md §3-4).

s(t) follows one of the kinetic laws of :mod:`dmdjax.kinetics`; at every evaluation of
the right-hand side (X, k) are relaxed at the current s (warm-started from the state at
the start of the current output interval), and the law is driven by μ = ∂F/∂s or
μ^ex = ∂⟨V⟩/∂s there (envelope theorem: no derivative through the relaxation).

The run is split at the output times: each interval is one ``diffrax.diffeqsolve``
(adaptive steps; any diffrax solver, e.g. ``diffrax.Kvaerno5()`` for stiff cases), and
the state at each output time is relaxed, recorded, and checked (s inside (−1, 1),
finite). Because each interval starts afresh from the recorded state, a run resumed
from any recorded state reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Union

import diffrax
import jax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import io, kinetics
from .free_energy import VGFreeEnergy
from .neighbors import NeighborList, neighbor_list
from .relax import _default_tolerance, _dense_hessian, _initial_stiffness, hessian_colouring, relax


class GradientFlow(eqx.Module):
    """(K1) ṡ_i = Σ_j M_ij (μ_j − μ_i); ``mobility`` k_c or a symmetric ``M(s_i, s_j)``."""

    mobility: Union[float, Callable] = 1.0


class SpinDiffusion(eqx.Module):
    """(K2) mean-field spin-diffusion with time scale ``tau``; ``variant`` "exact" or "gradient"."""

    tau: float = 1.0
    variant: str = eqx.field(static=True, default="exact")


class MasterEquation(eqx.Module):
    """(K3) master equation, ``attempt_frequency`` ν and ``activation_energy`` Q (eV)."""

    attempt_frequency: float = 1.0
    activation_energy: float = 0.0


KineticLaw = Union[GradientFlow, SpinDiffusion, MasterEquation]


class DMDError(RuntimeError):
    """A DMD run stopped: s left (−1, 1), a value became non-finite, or a step failed."""


class Trajectory(eqx.Module):
    """Recorded DMD states at the output times.

    Attributes:
        time: ``(T,)``; order_parameter: ``(T, N)``; positions: ``(T, N, d)`` Å;
        stiffness: ``(T, N)`` eV/Å²; free_energy: ``(T,)`` eV; parameters: a dict (static);
        neighbor_builds: ``((index, cutoff), ...)``, where :func:`run` rebuilt its neighbour
        list: at the positions of output ``index`` (−1: the initial, unrelaxed positions) with
        that cut-off (Å) — so a resumed run rebuilds the same list.
    """

    time: Float[Array, " t"]
    order_parameter: Float[Array, "t n"]
    positions: Float[Array, "t n d"]
    stiffness: Float[Array, "t n"]
    free_energy: Float[Array, " t"]
    parameters: dict = eqx.field(static=True)
    neighbor_builds: tuple = eqx.field(static=True, default=())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the run as ``.npz`` (atomically): arrays ``time``, ``order_parameter``,
        ``positions``, ``stiffness``, ``free_energy``, ``neighbor_builds`` and the JSON string
        ``parameters``."""
        arrays = {name: np.asarray(getattr(self, name)) for name in _FIELDS}
        arrays["neighbor_builds"] = np.asarray(self.neighbor_builds, dtype=float).reshape(-1, 2)
        return io.save_npz(path, arrays, self.parameters)


_FIELDS = ("time", "order_parameter", "positions", "stiffness", "free_energy")


def load_trajectory(path: str | os.PathLike) -> Trajectory:
    """Read a trajectory written by :meth:`Trajectory.save` (or by ``run(..., output=...)``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if it lacks one of the trajectory arrays.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"trajectory file not found: {str(p)!r}")
    try:
        with np.load(p) as data:
            missing = [name for name in (*_FIELDS, "parameters") if name not in data.files]
            if missing:
                raise ValueError(f"{str(p)!r} is not a dmdjax trajectory: missing {missing}")
            arrays = [np.asarray(data[name]) for name in _FIELDS]
            parameters = json.loads(str(data["parameters"]))
            builds = np.asarray(data["neighbor_builds"]) if "neighbor_builds" in data.files else np.zeros((0, 2))
    except ValueError:
        raise
    except Exception as err:  # zipfile.BadZipFile, EOFError, OSError, json errors: a damaged file
        raise ValueError(f"trajectory {str(p)!r} is damaged or truncated and cannot be read "
                         f"({type(err).__name__}: {err})") from None
    times = arrays[0]
    n = times.shape[0] if times.ndim == 1 else -1
    if n < 1 or any(a.shape[:1] != (n,) for a in arrays) or not all(np.all(np.isfinite(a)) for a in arrays):
        raise ValueError(f"trajectory {str(p)!r} is inconsistent: arrays {[a.shape for a in arrays]} "
                         "(or non-finite values)")
    return Trajectory(*(jnp.asarray(a) for a in arrays), parameters,
                      tuple((int(i), float(c)) for i, c in builds.reshape(-1, 2)))


def species_rate(vg: VGFreeEnergy, law: KineticLaw, graph: kinetics.BondGraph, positions, stiffness,
                 order_parameter, neighbors) -> Float[Array, " n"]:
    """ds/dt of ``law`` at a relaxed state (X, k, s)."""
    _check_law(vg, law)
    return _switched_rate(vg, _law_values(law, positions.dtype), graph, positions, stiffness, order_parameter,
                          neighbors)


def _check_law(vg, law):
    if isinstance(law, SpinDiffusion) and law.variant == "exact" and vg.potential.is_embedded:
        raise NotImplementedError("SpinDiffusion(variant='exact') needs a pair potential (V̌ multilinear in s); "
                                  "use variant='gradient' for EAM")


class _LawValues(eqx.Module):
    """Any kinetic law as one pytree: the branch index and every numeric parameter traced, so
    that all laws (and all parameter values) share one compiled solver per system shape."""

    branch: Array
    mobility: Array
    tau: Array
    attempt_frequency: Array
    activation_energy: Array
    mobility_function: Callable | None = eqx.field(static=True, default=None)


_BRANCHES = {"K1": 0, "K2-exact": 1, "K2-gradient": 2, "K3": 3}


def _law_values(law: KineticLaw, dtype) -> _LawValues:
    one = lambda value=1.0: jnp.asarray(value, dtype)
    if isinstance(law, GradientFlow):
        function = law.mobility if callable(law.mobility) else None
        return _LawValues(jnp.asarray(_BRANCHES["K1"]), one(1.0 if function else law.mobility), one(), one(), one(),
                          function)
    if isinstance(law, SpinDiffusion):
        if law.variant not in ("exact", "gradient"):
            raise ValueError(f"SpinDiffusion.variant must be 'exact' or 'gradient'; got {law.variant!r}")
        return _LawValues(jnp.asarray(_BRANCHES[f"K2-{law.variant}"]), one(), one(law.tau), one(), one())
    if isinstance(law, MasterEquation):
        return _LawValues(jnp.asarray(_BRANCHES["K3"]), one(), one(), one(law.attempt_frequency),
                          one(law.activation_energy))
    raise TypeError(f"unknown kinetic law {type(law).__name__}")


def _switched_rate(vg, values: _LawValues, graph, positions, stiffness, order_parameter, neighbors):
    """:func:`species_rate` with the law chosen by a traced index (``lax.switch``: only the
    chosen branch runs)."""
    beta = vg.beta.astype(positions.dtype)
    excess = vg.excess_chemical_potential(positions, stiffness, order_parameter, neighbors)

    def gradient_flow():
        mu = vg.chemical_potential(positions, stiffness, order_parameter, neighbors)
        mobility = values.mobility if values.mobility_function is None else values.mobility_function
        return kinetics.gradient_flow(order_parameter, mu, graph, mobility)

    def spin_diffusion_exact():
        if vg.potential.is_embedded:  # refused in run(); a placeholder keeps the switch traceable
            return jnp.full_like(order_parameter, jnp.nan)
        coupling = kinetics.pair_coupling(vg, positions, stiffness, graph)
        divided = kinetics.swap_divided_difference(order_parameter, excess, coupling, graph)
        return kinetics.spin_diffusion(order_parameter, divided, graph, beta, values.tau)

    def spin_diffusion_gradient():
        divided = kinetics.gradient_divided_difference(excess, graph)
        return kinetics.spin_diffusion(order_parameter, divided, graph, beta, values.tau)

    def master_equation():
        return kinetics.master_equation(order_parameter, excess, graph, beta, values.attempt_frequency,
                                        values.activation_energy)

    return jax.lax.switch(values.branch, [gradient_flow, spin_diffusion_exact, spin_diffusion_gradient,
                                          master_equation])


def _species_term(vg, law: _LawValues, graph, neighbors, positions, stiffness, tolerance, colouring,
                  relax_each=True):
    """ds/dt as a diffrax term: (X, k) relaxed at every evaluation, warm-started from
    (``positions``, ``stiffness``); a ``colouring`` selects Newton's method. With
    ``relax_each=False`` (X, k) stay at (``positions``, ``stiffness``)."""

    def vector_field(t, s, args):
        if not relax_each:
            return _switched_rate(vg, law, graph, positions, stiffness, s, neighbors)
        relaxed = relax(vg, positions, s, neighbors, stiffness, tolerance=tolerance, throw=False, colouring=colouring)
        rate = _switched_rate(vg, law, graph, relaxed.positions, relaxed.stiffness, s, neighbors)
        # No number from a stale list: a relaxation that left the list's reach fails the step.
        covered = vg.neighbor_fault(relaxed.positions, relaxed.stiffness, neighbors) <= 0
        return jnp.where(covered, rate, jnp.nan)

    return diffrax.ODETerm(vector_field)


@eqx.filter_jit
def _advance(vg, law, graph, neighbors, positions, stiffness, order_parameter, t0, t1, solver, controller, dt0,
             max_steps, tolerance, colouring=None, relax_each=True):
    """Integrate from t0 to t1 and relax there; one compiled function per system shape serves
    every law, and t0 = t1 relaxes the initial state."""
    solution = diffrax.diffeqsolve(
        _species_term(vg, law, graph, neighbors, positions, stiffness, tolerance, colouring, relax_each), solver,
        t0, t1, dt0,
        order_parameter, stepsize_controller=controller, max_steps=max_steps, throw=False,
        saveat=diffrax.SaveAt(t1=True),
    )
    s1 = solution.ys[-1]
    relaxed = relax(vg, positions, s1, neighbors, stiffness, tolerance=tolerance, throw=False, colouring=colouring)
    ok = (solution.result == diffrax.RESULTS.successful) & relaxed.converged
    return s1, relaxed.positions, relaxed.stiffness, relaxed.free_energy, ok, solution.stats["num_steps"]


def _law_parameters(law) -> dict:
    values = {}
    for name, value in vars(law).items():
        if isinstance(value, (int, float, str)):
            values[name] = value
        elif callable(value):
            values[name] = getattr(value, "__name__", repr(value))
        else:
            values[name] = np.asarray(value).tolist()
    return values


def run(
    vg: VGFreeEnergy,
    positions: Float[Array, "n d"],
    order_parameter: Float[Array, " n"],
    neighbors: NeighborList,
    law: KineticLaw,
    save_times,
    *,
    kinetic_cutoff: float,
    stiffness: Float[Array, " n"] | None = None,
    solver=None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    stepsize_controller=None,
    dt0: float | None = None,
    max_steps: int = 4096,
    tolerance: float | None = None,
    relax_method: str = "lbfgs",
    relax_at: str = "evaluation",
    output: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Trajectory:
    """Integrate s(t) from ``save_times[0]`` through every later output time.

    Arguments:
        vg: the free energy (its ``pinned_species`` sites do not evolve and carry no flux).
        positions, order_parameter: the initial state (X is relaxed first).
        stiffness: initial k (warm start). Passing a recorded state (s, X, k) of a trajectory
            resumes that run exactly: its relaxation is already converged.
        neighbors: the starting neighbour list (its skin is kept). The run rebuilds it at an
            output state when less than half the skin is left for the free energy's
            interaction range, and redoes an interval whose relaxation left it; the rebuilds
            are recorded in ``Trajectory.neighbor_builds`` (``docs/reliability.md``).
        law: :class:`GradientFlow`, :class:`SpinDiffusion` or :class:`MasterEquation`.
        save_times: increasing output times; the first is the start time.
        kinetic_cutoff: bond length for exchanges, Å.
        solver: a diffrax solver (default ``Tsit5``; an implicit one such as ``Kvaerno5``
            for stiff cases, e.g. the master equation at low temperature — its Jacobian
            differentiates through the relaxation by the implicit function theorem).
        rtol, atol: tolerances of the default ``diffrax.PIDController``.
        stepsize_controller, dt0: replace the default controller (e.g.
            ``diffrax.ConstantStepSize()`` with a fixed ``dt0``).
        max_steps: solver steps allowed per output interval.
        tolerance: relaxation tolerance (default: that of :func:`~dmdjax.relax`).
        relax_method: ``"lbfgs"`` or ``"newton"`` (see :func:`~dmdjax.relax`): Newton is
            much faster for chains and small systems (up to a few thousand unknowns).
        relax_at: ``"evaluation"`` (default): (X, k) relaxed at every right-hand side, the
            quasistatic model exactly. ``"interval"``: relaxed at the output times only and
            held inside each output interval (the staggered scheme of the C++ DMD codes):
            each evaluation then costs one μ (no relaxation), for large systems; its error is
            first order in the interval length (tests/test_dmd.py measures it), and F still
            decreases from one output to the next for K1, K2-gradient and K3.
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
    if relax_at not in ("evaluation", "interval"):
        raise ValueError(f"relax_at must be 'evaluation' or 'interval'; got {relax_at!r}")
    solver = diffrax.Tsit5() if solver is None else solver
    controller = diffrax.PIDController(rtol=rtol, atol=atol) if stepsize_controller is None else stepsize_controller
    dtype = positions.dtype
    parameters = {"law": type(law).__name__, "law_parameters": _law_parameters(law),
                  "temperature": float(vg.temperature), "kinetic_cutoff": kinetic_cutoff,
                  "quadrature": vg.quadrature, "nodes": vg.nodes, "solver": type(solver).__name__,
                  "stepsize_controller": type(controller).__name__, "rtol": rtol, "atol": atol,
                  "dt0": None if dt0 is None else float(dt0), "max_steps": max_steps, "relax_method": relax_method,
                  "relax_at": relax_at,
                  "n_sites": int(order_parameter.shape[0]), "dtype": jnp.dtype(dtype).name}
    record, builds = [], []
    if output is not None and Path(output).exists():
        if resume:
            checkpoint = load_trajectory(output)
            record = _checkpoint_record(checkpoint, parameters, times, output)
            builds = list(checkpoint.neighbor_builds)
        elif not overwrite:
            raise FileExistsError(f"{str(output)!r} exists: pass resume=True to continue it or overwrite=True")
    elif resume:
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {str(output)!r}")
    _check_law(vg, law)
    graph = kinetics.bond_graph(positions, vg.cell, neighbors, kinetic_cutoff, pinned_species=vg.pinned_species)
    if builds:  # the list the interrupted run was using
        index, cutoff = builds[-1]
        at = positions if index < 0 else record[index][1]
        neighbors = neighbor_list(at, vg.cell, cutoff, skin=neighbors.skin)
    lists = _RunNeighbors(vg, neighbors, builds, relax_method)
    values = _law_values(law, dtype)
    dt0 = None if dt0 is None else jnp.asarray(dt0, dtype)  # traced: a new dt0 does not recompile
    tolerance = jnp.asarray(_default_tolerance(dtype) if tolerance is None else tolerance, dtype)  # traced too
    if not record:  # relax the initial state (a zero-length interval: the same compiled function)
        t0 = jnp.asarray(times[0], dtype)
        if stiffness is None:
            stiffness = _initial_stiffness(vg, positions, order_parameter, neighbors)
        lists.prepare(positions, stiffness, -1)
        _, x0, k0, f0, ok, _ = lists.advance(values, graph, positions, stiffness, order_parameter, t0, t0, solver,
                                             controller, dt0, max_steps, tolerance, True, -1)
        if not bool(ok):
            raise DMDError("DMD could not start: the relaxation of (X, k) at the initial s did not converge "
                           "(check the structure, or loosen tolerance)")
        record = [(order_parameter, x0, k0, f0)]
        _write(output, times, record, parameters, builds)
    intervals = range(len(record), times.size)
    if progress:
        from tqdm.auto import tqdm

        intervals = tqdm(intervals, desc=f"DMD {type(law).__name__}", unit="interval")
    for index in intervals:
        s0, x0, k0, _ = record[-1]
        t0, t1 = times[index - 1], times[index]
        lists.prepare(x0, k0, len(record) - 1)
        s1, x1, k1, f1, ok, steps = lists.advance(values, graph, x0, k0, s0, jnp.asarray(t0, dtype),
                                                  jnp.asarray(t1, dtype), solver, controller, dt0, max_steps,
                                                  tolerance, relax_at == "evaluation", len(record) - 1)
        bad = ~np.isfinite(np.asarray(s1)) | ((np.abs(np.asarray(s1)) >= 1.0) & ~np.asarray(vg.pinned_species))
        if not bool(ok) or np.any(bad) or not np.isfinite(float(f1)):
            sites = np.flatnonzero(bad).tolist()
            error = DMDError(
                f"DMD stopped in ({t0:g}, {t1:g}]: "
                + (f"s left (-1, 1) or became non-finite at sites {sites}" if sites else
                   f"the ODE solver (after {int(steps)} steps; max_steps={max_steps}) or the (X, k) "
                   "relaxation failed")
                + f"; the last good state is at t = {times[len(record) - 1]:g}"
                + (f" and is saved in {str(output)!r}" if output is not None else "")
            )
            error.trajectory = _trajectory(times[: len(record)], record, parameters, builds)
            raise error
        record.append((s1, x1, k1, f1))
        _write(output, times, record, parameters, builds)
        if progress:
            intervals.set_postfix(t=f"{t1:g}", F=f"{float(f1):.6g}")
    return _trajectory(times, record, parameters, builds)


class _RunNeighbors:
    """The neighbour list of a :func:`run` (host side): rebuilt at a recorded state when the
    atoms moved or k softened so far that less than half the skin is left (Verlet's rule for
    the VG interaction range), or when an interval failed because its relaxation left the
    list's reach (then with room for the distance it moved, and the interval is redone).
    Every rebuild is logged in ``builds`` as (record index, cut-off), which makes a resumed
    run rebuild the same lists."""

    def __init__(self, vg, neighbors, builds, relax_method):
        self.vg, self.neighbors, self.builds, self.relax_method = vg, neighbors, builds, relax_method
        self.colouring = _colouring(vg, neighbors, relax_method)

    def _rebuild(self, positions, cutoff, index):
        cutoff = float(cutoff)
        self.neighbors = neighbor_list(positions, self.vg.cell, cutoff, skin=self.neighbors.skin)
        self.colouring = _colouring(self.vg, self.neighbors, self.relax_method)
        self.builds.append((int(index), cutoff))

    def prepare(self, positions, stiffness, index):
        vg, neighbors = self.vg, self.neighbors
        needed = float(vg.interaction_range(stiffness))
        if bool(neighbors.overflow) or float(neighbors.reach(positions)) < needed + 0.5 * neighbors.skin:
            margin = 0.25 * float(vg.reach(stiffness))
            self._rebuild(positions, vg.cell.within_minimum_image(max(neighbors.cutoff, needed + margin), needed), index)

    def advance(self, values, graph, positions, stiffness, order_parameter, t0, t1, solver, controller, dt0,
                max_steps, tolerance, relax_each, index):
        arguments = (values, graph)
        tail = (positions, stiffness, order_parameter, t0, t1, solver, controller, dt0, max_steps, tolerance)
        result = _advance(self.vg, *arguments, self.neighbors, *tail, self.colouring, relax_each)
        s1, x1, k1, f1, ok, _ = result
        if bool(ok) or not np.all(np.isfinite(np.asarray(x1))):
            return result
        fault = float(self.vg.neighbor_fault(x1, k1, self.neighbors))
        if fault <= 0:
            return result  # not the list's doing
        # Room for what this interval moved the atoms (both ends of a pair) and softened k.
        moved = float(jnp.max(jnp.linalg.norm(self.vg.cell.displacement(x1, positions), axis=-1)))
        needed = float(self.vg.interaction_range(jnp.minimum(stiffness, k1)))
        wanted = max(self.neighbors.cutoff, needed + 2.0 * moved + 0.25 * self.neighbors.skin)
        self._rebuild(positions, self.vg.cell.within_minimum_image(wanted, needed), index)
        return _advance(self.vg, *arguments, self.neighbors, *tail, self.colouring, relax_each)


class Solution(eqx.Module):
    """The result of :func:`solve`.

    Attributes:
        time: ``(T,)`` the save times; order_parameter: s at them, ``(T, N)``;
        ok: ``()`` True if the solver succeeded (otherwise the entries after the failure are
        not valid); num_steps: ``()`` solver steps taken.
    """

    time: Float[Array, " t"]
    order_parameter: Float[Array, "t n"]
    ok: Array
    num_steps: Array


def solve(
    vg: VGFreeEnergy,
    law: KineticLaw,
    graph: kinetics.BondGraph,
    neighbors: NeighborList,
    positions: Float[Array, "n d"],
    stiffness: Float[Array, " n"],
    order_parameter: Float[Array, " n"],
    save_times: Float[Array, " t"],
    *,
    solver=None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    stepsize_controller=None,
    dt0=None,
    max_steps: int = 4096,
    tolerance: float | None = None,
    colouring=None,
    adjoint=None,
) -> Solution:
    """s(t) at ``save_times`` in one pure call: jit-, vmap- and grad-able (DESIGN.md §4, §8).

    The same equations as :func:`run` — ds/dt of ``law`` at (X*, k*) relaxed at every
    right-hand side evaluation — as a single ``diffrax.diffeqsolve`` without host-side checks,
    files or restarts: for gradients of a loss on a trajectory with respect to anything in
    ``vg`` (potential parameters, temperature) and ``law`` (k_c, τ, ν, Q) or s(0), and for
    batches under ``jax.vmap``. Reverse mode uses diffrax's ``RecursiveCheckpointAdjoint``
    and the relaxation's implicit derivatives (never the iterations of its solver). Memory:
    one step's residuals plus one loop state per checkpoint; the default keeps
    ≈ √(2 max_steps) checkpoints (memory ∝ √max_steps), ``adjoint=
    diffrax.RecursiveCheckpointAdjoint(checkpoints=C)`` bounds it whatever the number of steps
    (more recomputation); measured in docs/benchmarks.md (``scripts/adjoint_memory.py``).

    Arguments:
        graph: kinetic bonds (:func:`dmdjax.kinetics.bond_graph`, built outside).
        positions, stiffness: (X, k) relaxed at (or near) ``order_parameter``: the warm start
            of every relaxation. They are constants (no derivative flows through them).
        save_times: increasing; the first is the start time.
        solver, rtol, atol, stepsize_controller, dt0, max_steps: as in :func:`run` (default
            Tsit5 with a ``PIDController(rtol, atol)``; a ``ConstantStepSize`` with ``dt0`` makes
            the steps, and so the derivatives of the discrete map, independent of the parameters).
        neighbors: must cover the free energy's interaction range at every state the run
            visits (nothing can be rebuilt inside one solve): e.g.
            ``vg.neighbor_list(positions, stiffness, skin=...)`` with a skin above twice the
            distance atoms move. A right-hand side from a list that does not cover its state is
            NaN, so the solve fails (``ok`` False) rather than returning a wrong trajectory.
        tolerance: relaxation tolerance; colouring: a :func:`~dmdjax.relax.hessian_colouring`
            selects Newton's method for the relaxation (L-BFGS otherwise).

    Returns:
        A :class:`Solution`; check ``ok`` (a failed solve is flagged, not raised, inside jit).
    """
    dtype = positions.dtype
    solver = diffrax.Tsit5() if solver is None else solver
    controller = diffrax.PIDController(rtol=rtol, atol=atol) if stepsize_controller is None else stepsize_controller
    positions, stiffness = jax.lax.stop_gradient((positions, stiffness))
    term = _species_term(vg, _law_values(law, dtype), graph, neighbors, positions, stiffness, tolerance, colouring)
    save_times = jnp.asarray(save_times, dtype)
    solution = diffrax.diffeqsolve(
        term, solver, save_times[0], save_times[-1], dt0, order_parameter,
        stepsize_controller=controller, max_steps=max_steps, throw=False, saveat=diffrax.SaveAt(ts=save_times),
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
    )
    return Solution(save_times, solution.ys, solution.result == diffrax.RESULTS.successful,
                    solution.stats["num_steps"])


class Equilibrium(eqx.Module):
    """The composition-constrained minimum of F (see :func:`equilibrium`).

    Attributes:
        order_parameter: s* ``(N,)``; positions: X* ``(N, d)``; stiffness: k* ``(N,)``;
        free_energy: F*, eV; chemical_potential: the common μ of the free sites, eV;
        residual: max |μ_i − μ| over free sites, eV; iterations: Newton steps.
    """

    order_parameter: Float[Array, " n"]
    positions: Float[Array, "n d"]
    stiffness: Float[Array, " n"]
    free_energy: Float[Array, ""]
    chemical_potential: Float[Array, ""]
    residual: float
    iterations: int


@eqx.filter_jit
def _potential_jacobian(vg, positions, stiffness, order_parameter, neighbors, colouring):
    """μ = ∂F/∂s at a relaxed (X*, k*) and its total derivative through X*(s), k*(s):
    dμ/ds = F_ss − F_sz H_zz⁻¹ F_zs (implicit function theorem at ∇_z F = 0, z = (X, log k) of
    the unpinned atoms), with the dense H_zz from compressed Hessian-vector products."""
    n, d = positions.shape
    log_stiffness = jnp.log(jnp.where(vg.pinned, 1.0, stiffness))
    z = jnp.concatenate([positions, log_stiffness[:, None]], axis=1)
    mu = lambda z, s: vg.chemical_potential(z[:, :d], jnp.exp(z[:, d]), s, neighbors)
    gradient = jax.grad(lambda z, s: vg(z[:, :d], jnp.exp(z[:, d]), s, neighbors))
    free = jnp.broadcast_to(~vg.pinned[:, None], (n, d + 1)).reshape(-1)
    h_zz = _dense_hessian(lambda z: gradient(z, order_parameter), z, colouring)
    h_zz = jnp.where(free[:, None] & free[None, :], h_zz, 0.0) + jnp.diag(~free)
    f_zs = jax.jacfwd(lambda s: gradient(z, s).reshape(-1))(order_parameter)
    f_zs = jnp.where(free[:, None], f_zs, 0.0)
    f_ss = jax.jacfwd(lambda s: mu(z, s))(order_parameter)
    return mu(z, order_parameter), f_ss - f_zs.T @ jnp.linalg.solve(h_zz, f_zs)


def equilibrium(
    vg: VGFreeEnergy,
    positions: Float[Array, "n d"],
    order_parameter: Float[Array, " n"],
    neighbors: NeighborList,
    *,
    tolerance: float = 1e-10,
    max_steps: int = 100,
    relax_tolerance: float | None = None,
    relax_method: str = "lbfgs",
    start: str = "uniform",
    method: str = "newton",
) -> Equilibrium:
    r"""Minimise F(X, k, s) over s with Σ_i s_i fixed, jointly with (X, k) — DMD's long-time state.

    Newton's method on the Lagrange conditions μ_i(s) = λ (free sites), Σ s_i = Σ s_i⁰,
    with μ = ∂F/∂s at the relaxed (X*, k*) and its exact Jacobian (through the relaxation,
    by the implicit function theorem), started (``start="uniform"``, the default) from the
    uniform composition — so it is independent of any trajectory — or (``start="given"``)
    from ``order_parameter``: where F is not convex in s (segregating alloys below the
    mean-field critical temperature) the uniform state is a saddle, and a start near the
    wanted minimum (e.g. a long DMD run's last state) picks it. ``relax_method`` as in
    :func:`run`. Steps are damped to keep s inside (−1, 1); where the
    Newton step is not a descent direction (F not convex there) a scaled projected
    gradient step is taken instead. Pinned-species sites keep their s. Dense N×N Jacobians: meant for
    N ≲ 10³. One conserved total: the free sites should form one connected bond graph.

    ``method="self-consistent"`` replaces Newton's method by the mean-field self-consistent
    iteration s_i ← tanh(β(λ − μ_i^ex(s))) (μ_i = μ_i^ex + β⁻¹ artanh s_i = λ solved for s at
    fixed μ^ex; λ set by Σ s_i), linearly mixed (mixing halved whenever the residual grows):
    one relaxation and one μ^ex per step, no Jacobian, so any N — for systems where F is
    convex in s and the solute feedback is weak (dilute alloys); it converges linearly.

    Raises:
        DMDError: if the iteration has not reached ``tolerance`` (eV, on max |μ_i − λ|)
            after ``max_steps`` steps.
    """
    if start not in ("uniform", "given"):
        raise ValueError(f"start must be 'uniform' or 'given'; got {start!r}")
    if method not in ("newton", "self-consistent"):
        raise ValueError(f"method must be 'newton' or 'self-consistent'; got {method!r}")
    free = ~np.asarray(vg.pinned_species)
    n_free = int(free.sum())
    s = np.asarray(order_parameter, dtype=float).copy()
    if start == "uniform":
        s[free] = s[free].sum() / n_free
    dtype = positions.dtype
    colouring = _colouring(vg, neighbors, relax_method)
    if method == "self-consistent":
        return _self_consistent(vg, positions, s, neighbors, free, tolerance, max_steps, relax_tolerance, colouring)
    jacobian_colouring = colouring if colouring is not None else hessian_colouring(vg, neighbors)
    x, k = positions, None
    for iteration in range(max_steps + 1):
        relaxed = relax(vg, x, jnp.asarray(s, dtype), neighbors, k, tolerance=relax_tolerance, colouring=colouring)
        x, k = relaxed.positions, relaxed.stiffness
        if relaxed.neighbors is not neighbors:  # relax rebuilt the list: a new sparsity pattern
            neighbors = relaxed.neighbors
            colouring = _colouring(vg, neighbors, relax_method)
            jacobian_colouring = colouring if colouring is not None else hessian_colouring(vg, neighbors)
        mu, hessian = _potential_jacobian(vg, x, k, jnp.asarray(s, dtype), neighbors,
                                          jacobian_colouring)
        mu, hessian = np.asarray(mu)[free], np.asarray(hessian)[np.ix_(free, free)]
        lagrange = mu.mean()
        residual = float(np.max(np.abs(mu - lagrange)))
        if residual <= tolerance:
            return Equilibrium(jnp.asarray(s, dtype), x, k, relaxed.free_energy, jnp.asarray(lagrange, dtype),
                               residual, iteration)
        # KKT system [[H, -1], [1ᵀ, 0]] (δs, λ) = (−μ, 0).
        kkt = np.block([[hessian, -np.ones((n_free, 1))], [np.ones((1, n_free)), np.zeros((1, 1))]])
        step = np.linalg.solve(kkt, np.concatenate([-mu, [0.0]]))[:n_free]
        step -= step.mean()  # keep Σ s exact
        if step @ mu > 0:  # not a descent direction on the constraint set: projected gradient instead
            step = -(mu - lagrange) / np.max(np.abs(np.diag(hessian)))
        largest = np.max(np.abs(s[free] + step))
        damping = 1.0 if largest < 1 else 0.9 * np.min(
            np.where(np.abs(step) > 0, (np.sign(step) - s[free]) / np.where(step == 0, 1, step), np.inf))
        s[free] = s[free] + min(1.0, damping) * step
    raise DMDError(f"equilibrium: Newton's method did not reach max |μ_i − λ| <= {tolerance} eV in {max_steps} "
                   f"steps (last {residual:.3g} eV)")


def _self_consistent(vg, positions, s, neighbors, free, tolerance, max_steps, relax_tolerance, colouring):
    """``equilibrium(method="self-consistent")``: mixed fixed-point iteration on s = tanh(β(λ − μ^ex))."""
    from scipy.optimize import brentq

    dtype = positions.dtype
    beta = float(vg.beta)
    total = s[free].sum()
    x, k, mixing, previous = positions, None, 1.0, np.inf
    for iteration in range(max_steps + 1):
        state = jnp.asarray(s, dtype)
        relaxed = relax(vg, x, state, neighbors, k, tolerance=relax_tolerance, colouring=colouring)
        x, k = relaxed.positions, relaxed.stiffness
        if relaxed.neighbors is not neighbors:  # relax rebuilt the list
            neighbors = relaxed.neighbors
            colouring = None if colouring is None else hessian_colouring(vg, neighbors)
        excess = np.asarray(vg.excess_chemical_potential(x, k, state, neighbors), dtype=float)[free]
        mu = excess + np.arctanh(s[free]) / beta  # μ = μ^ex + β⁻¹ artanh s (VGFreeEnergy.chemical_potential)
        lagrange = mu.mean()
        residual = float(np.max(np.abs(mu - lagrange)))
        if residual <= tolerance:
            return Equilibrium(state, x, k, relaxed.free_energy, jnp.asarray(lagrange, dtype), residual, iteration)
        if residual > previous:
            mixing *= 0.5
        previous = residual
        target = lambda lam: np.tanh(beta * (lam - excess))
        width = 40.0 / beta  # tanh saturates: the sum spans (−n, n) over this bracket
        lam = brentq(lambda lam: target(lam).sum() - total, excess.min() - width, excess.max() + width, xtol=1e-15)
        update = target(lam)
        update += (total - update.sum()) / update.size  # Σ s exact to rounding
        s[free] = (1.0 - mixing) * s[free] + mixing * np.clip(update, -1 + 1e-15, 1 - 1e-15)
    raise DMDError(f"equilibrium (self-consistent): max |μ_i − λ| did not reach {tolerance} eV in {max_steps} "
                   f"steps (last {residual:.3g} eV)")


def _colouring(vg, neighbors, relax_method):
    """The Hessian colouring that makes :func:`~dmdjax.relax` use Newton, or None (L-BFGS)."""
    if relax_method not in ("lbfgs", "newton"):
        raise ValueError(f"relax_method must be 'lbfgs' or 'newton'; got {relax_method!r}")
    return hessian_colouring(vg, neighbors) if relax_method == "newton" else None


def _write(output, times, record, parameters, builds=()):
    if output is not None:
        _trajectory(times[: len(record)], record, parameters, builds).save(output)


def _checkpoint_record(checkpoint: Trajectory, parameters, times, output):
    saved = dict(checkpoint.parameters)
    if saved != json.loads(json.dumps(parameters)):
        changed = sorted(k for k in set(saved) | set(parameters) if saved.get(k) != parameters.get(k))
        raise ValueError(f"checkpoint {str(output)!r} was written with different parameters: {changed}")
    n = checkpoint.time.shape[0]
    if n > times.size or not np.array_equal(np.asarray(checkpoint.time), times[:n]):
        raise ValueError(f"checkpoint {str(output)!r} has times {np.asarray(checkpoint.time).tolist()}, "
                         f"not a prefix of save_times")
    return [(checkpoint.order_parameter[i], checkpoint.positions[i], checkpoint.stiffness[i],
             checkpoint.free_energy[i]) for i in range(n)]


def _trajectory(times, record, parameters, builds=()) -> Trajectory:
    # Stacked on the host: a device stack would compile once per trajectory length.
    s, x, k, f = (jax.device_put(np.stack([np.asarray(item) for item in items])) for items in zip(*record))
    return Trajectory(jax.device_put(np.asarray(times)), s, x, k, f, parameters, tuple(builds))
