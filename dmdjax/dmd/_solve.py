r"""The pure DMD driver: s(t) with (X, k) quasistatic, one output interval at a time."""

from __future__ import annotations

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from .. import _validate, kinetics
from ..free_energy import VGFreeEnergy
from ..neighbors import NeighborList
from ..relax import check_method, default_tolerance, hessian_colouring, relax
from ..state import DMDState, HoldsState

#: Where (X, k) are relaxed: at every right-hand side ("rhs") or at the output times ("interval").
RELAX_AT = ("rhs", "interval")


class DMDError(RuntimeError):
    """A DMD run stopped: s left (−1, 1), a value became non-finite, or a step failed."""


class Solution(HoldsState):
    """The result of :func:`solve`.

    Attributes:
        time: ``(T,)`` the save times.
        state: the relaxed :class:`~dmdjax.DMDState` at each save time, stacked (``(T, N, d)``
            positions, ``(T, N)`` stiffness and order parameters).
        free_energy: ``(T,)`` eV.
        ok: ``()`` True if every interval succeeded (else the entries from the first failed
            one on are not valid; see ``valid``).
        valid: ``(T,)`` True for the entries up to the first failure.
        num_steps: ``()`` solver steps taken, over all intervals.

    ``order_parameter``, ``positions`` and ``stiffness`` are shortcuts for the fields of ``state``.
    """

    time: Float[Array, " t"]
    state: DMDState
    free_energy: Float[Array, " t"]
    ok: Bool[Array, ""]
    valid: Bool[Array, " t"]
    num_steps: Int[Array, ""]





class Options(eqx.Module):
    """The numerical options of a solve, as one pytree (the numbers traced: changing a
    tolerance or ``dt0`` does not recompile)."""

    solver: diffrax.AbstractSolver
    controller: diffrax.AbstractStepSizeController
    dt0: Array | None
    tolerance: Array
    max_steps: int = eqx.field(static=True)
    relax_at: str = eqx.field(static=True)
    colouring: object = None


def make_options(dtype, *, solver=None, rtol=1e-8, atol=1e-10, stepsize_controller=None, dt0=None, max_steps=4096,
                 tolerance=None, relax_at="rhs", colouring=None) -> Options:
    """Validate and gather the options shared by :func:`solve` and :func:`~dmdjax.dmd.run`."""
    if relax_at not in RELAX_AT:
        raise ValueError(f"relax_at must be one of {RELAX_AT}; got {relax_at!r}")
    if not (isinstance(max_steps, (int, np.integer)) and max_steps >= 1):
        raise ValueError(f"max_steps must be a positive integer; got {max_steps!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        _validate.positive(value, name, "")
    if tolerance is not None:
        _validate.positive(tolerance, "tolerance", " (eV)")
    if dt0 is not None:
        _validate.positive(dt0, "dt0", " (time)")
    solver = diffrax.Tsit5() if solver is None else solver
    controller = diffrax.PIDController(rtol=rtol, atol=atol) if stepsize_controller is None else stepsize_controller
    return Options(solver, controller, None if dt0 is None else jnp.asarray(dt0, dtype),
                   jnp.asarray(default_tolerance(dtype) if tolerance is None else tolerance, dtype), int(max_steps),
                   relax_at, colouring)


def _species_term(vg, law, graph, neighbors, start: DMDState, options: Options):
    """ds/dt as a diffrax term. ``relax_at="rhs"``: (X, k) relaxed at every evaluation,
    warm-started from ``start`` (whose X, k are then constants); ``"interval"``: (X, k) held at
    ``start``'s."""
    relax_each = options.relax_at == "rhs"
    method = "lbfgs" if options.colouring is None else "newton"
    if relax_each:
        start = eqx.tree_at(lambda s: (s.positions, s.stiffness), start,
                            jax.lax.stop_gradient((start.positions, start.stiffness)))

    def vector_field(t, s, args):
        state = DMDState(start.positions, start.stiffness, s)
        if not relax_each:
            return kinetics.species_rate(vg, state, neighbors, law, graph)
        relaxed = relax(vg, state, neighbors, method=method, tolerance=options.tolerance, throw=False,
                        colouring=options.colouring)
        rate = kinetics.species_rate(vg, relaxed.state, neighbors, law, graph)
        # No number from a stale list: a relaxation that left the list's reach fails the step.
        covered = vg.neighbor_fault(relaxed.state, neighbors) <= 0
        return jnp.where(covered, rate, jnp.nan)

    return diffrax.ODETerm(vector_field)


def interval(vg, law, graph, neighbors, start: DMDState, t0, t1, options: Options, adjoint=None):
    """One output interval: integrate s from ``start`` (relaxed at t0) to t1 and relax (X, k)
    there, warm-started from ``start``. t0 = t1 relaxes ``start`` itself.

    Returns:
        (state at t1, F there, ok, solver steps); ok is False when the solver or the
        relaxation failed, or s left (−1, 1) on a free site, or a value is not finite.
    """
    solution = diffrax.diffeqsolve(
        _species_term(vg, law, graph, neighbors, start, options), options.solver, t0, t1, options.dt0,
        start.order_parameter, stepsize_controller=options.controller, max_steps=options.max_steps, throw=False,
        saveat=diffrax.SaveAt(t1=True),
        adjoint=diffrax.RecursiveCheckpointAdjoint() if adjoint is None else adjoint,
    )
    state, free_energy, ok = relax_state(vg, DMDState(start.positions, start.stiffness, solution.ys[-1]), neighbors,
                                         options)
    return state, free_energy, ok & (solution.result == diffrax.RESULTS.successful), solution.stats["num_steps"]


def relax_state(vg, state: DMDState, neighbors, options: Options):
    """(X, k) relaxed at the state's s, warm-started from its (X, k): (relaxed state, F, ok); ok
    is False when the relaxation failed, F is not finite, or s is outside (−1, 1) on a free site."""
    method = "lbfgs" if options.colouring is None else "newton"
    relaxed = relax(vg, state, neighbors, method=method, tolerance=options.tolerance, throw=False,
                    colouring=options.colouring)
    s = state.order_parameter
    inside = jnp.all(jnp.isfinite(s) & ((jnp.abs(s) < 1.0) | vg.pinned_species))
    return relaxed.state, relaxed.free_energy, relaxed.converged & inside & jnp.isfinite(relaxed.free_energy)


advance = eqx.filter_jit(interval)
"""The jit-compiled :func:`interval` (one compiled function per system shape serves every law)."""


def failure_message(times, index: int, order_parameter, pinned_species, steps, max_steps) -> str:
    """What went wrong in the interval (times[index − 1], times[index]] (shared by
    :func:`solve` and :func:`~dmdjax.dmd.run`, so both raise the same :class:`DMDError`)."""
    s = _validate.host_array(order_parameter)
    bad = ~np.isfinite(s) | ((np.abs(s) >= 1.0) & ~_validate.host_array(pinned_species))
    sites = np.flatnonzero(bad).tolist()
    t0 = times[max(index - 1, 0)]
    return (f"DMD stopped in ({t0:g}, {times[index]:g}]: "
            + (f"s left (-1, 1) or became non-finite at sites {sites}" if sites else
               f"the ODE solver (after {int(steps)} steps; max_steps={max_steps}) or the (X, k) relaxation failed")
            + f"; the last good state is at t = {t0:g}")


def solve(
    vg: VGFreeEnergy,
    state: DMDState,
    neighbors: NeighborList,
    law: kinetics.KineticLaw,
    graph: kinetics.BondGraph,
    save_times: Float[Array, " t"],
    *,
    solver=None,
    rtol: float = 1e-8,
    atol: float = 1e-10,
    stepsize_controller=None,
    dt0=None,
    max_steps: int = 4096,
    tolerance: float | None = None,
    relax_method: str = "lbfgs",
    colouring=None,
    relax_at: str = "rhs",
    adjoint=None,
    throw: bool = False,
) -> Solution:
    """The DMD trajectory at ``save_times`` in one pure call: jit-, vmap- and grad-able
    (DESIGN.md §4, §8).

    s follows ``law`` (DESIGN.md §4) driven by μ = ∂F/∂s (or μ^ex) at (X*, k*) relaxed at the
    current s (DESIGN.md §3). The run is split at the output times: each interval is one
    ``diffrax.diffeqsolve`` started afresh from the state recorded at its start, and the state
    at each output time is relaxed and recorded — exactly what :func:`~dmdjax.dmd.run` does.
    Called on the host (concrete arguments) it runs the same compiled interval function as
    :func:`~dmdjax.dmd.run`, once per output interval, so the two agree bit for bit (and one
    compilation serves any number of output times); inside ``jit``, ``vmap`` or ``grad`` it
    is one ``lax.scan`` over the intervals (the same equations, compiled together: rounding
    differences of ~1e-12 in float64).

    For gradients of a loss on a trajectory with respect to anything in ``vg`` (potential
    parameters, temperature), ``law`` (k_c, τ, ν, Q) or the initial s, and for batches under
    ``jax.vmap``. Reverse mode uses diffrax's ``RecursiveCheckpointAdjoint`` per interval and
    the relaxation's implicit derivatives (never the iterations of its solver). Memory: one
    step's residuals plus one loop state per checkpoint; the default keeps ≈ √(2 max_steps)
    checkpoints, ``adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints=C)`` bounds it
    (``scripts/adjoint_memory.py``).

    Arguments:
        vg: the free energy (its ``pinned_species`` sites do not evolve and carry no flux).
        state: the initial (X, k, s); (X, k) are relaxed at s first (X and k are a warm start).
        neighbors: must cover the free energy's interaction range at every state the run
            visits (nothing can be rebuilt inside one solve): e.g.
            ``vg.neighbor_list(positions, stiffness, skin=...)`` with a skin above twice the
            distance atoms move. A right-hand side from a list that does not cover its state is
            NaN, so the solve fails (``ok`` False) rather than returning a wrong trajectory.
        law: :class:`~dmdjax.kinetics.GradientFlow`, :class:`~dmdjax.kinetics.SpinDiffusion`
            or :class:`~dmdjax.kinetics.MasterEquation`.
        graph: kinetic bonds (:func:`dmdjax.kinetics.bond_graph`).
        save_times: increasing output times; the first is the start time.
        solver: a diffrax solver (default ``Tsit5``; an implicit one such as ``Kvaerno5`` for
            stiff cases — its Jacobian differentiates through the relaxation implicitly).
        rtol, atol: tolerances of the default ``diffrax.PIDController``.
        stepsize_controller, dt0: replace the default controller (e.g.
            ``diffrax.ConstantStepSize()`` with a fixed ``dt0``: the steps, and so the
            derivatives of the discrete map, are then independent of the parameters).
        max_steps: solver steps allowed per output interval.
        tolerance: relaxation tolerance (default :func:`~dmdjax.relax.default_tolerance`).
        relax_method: ``"lbfgs"`` or ``"newton"`` (:func:`~dmdjax.relax`); Newton is much
            faster for chains and small systems. Under ``jit``, Newton needs ``colouring``
            (:func:`~dmdjax.relax.hessian_colouring`, computed outside).
        relax_at: ``"rhs"`` (default): (X, k) relaxed at every right-hand side evaluation, the
            quasistatic model exactly. ``"interval"``: relaxed at the output times only and
            held inside each interval (the staggered scheme of the C++ DMD codes): each
            evaluation then costs one μ; its error is first order in the interval length.
        adjoint: diffrax adjoint of each interval (default ``RecursiveCheckpointAdjoint()``).
        throw: raise :class:`DMDError` (naming the interval and sites, as
            :func:`~dmdjax.dmd.run`) when a step fails; under ``jit`` it raises through
            ``equinox.error_if`` instead.

    Returns:
        A :class:`Solution`; without ``throw``, check ``ok``.
    """
    kinetics.check_law(vg, law)
    check_method(relax_method, colouring)
    if _validate.is_concrete(save_times):
        times = np.asarray(save_times, dtype=float)
        if times.ndim != 1 or times.size < 2 or np.any(np.diff(times) <= 0) or not np.all(np.isfinite(times)):
            raise ValueError(f"save_times must be finite and increasing with at least two entries; got "
                             f"{times.tolist()}")
    vg.check(state, neighbors)
    concrete = _validate.on_host((vg, state, neighbors, law, save_times, solver, stepsize_controller, dt0))
    if relax_method == "newton" and colouring is None:
        if not _validate.is_concrete(neighbors):
            raise ValueError("solve(relax_method='newton') inside jit needs colouring=hessian_colouring(vg, "
                             "neighbors), computed outside")
        colouring = hessian_colouring(vg, neighbors)
    dtype = state.dtype
    options = make_options(dtype, solver=solver, rtol=rtol, atol=atol, stepsize_controller=stepsize_controller,
                           dt0=dt0, max_steps=max_steps, tolerance=tolerance, relax_at=relax_at, colouring=colouring)
    values = kinetics.law_parameters(law, dtype)
    times = jnp.asarray(save_times, dtype)
    if concrete:
        solution, steps = _host_trajectory(vg, values, graph, neighbors, state, times, options, adjoint)
    else:
        solution, steps = _trajectory(vg, values, graph, neighbors, state, times, options, adjoint)
    if throw:
        if concrete:
            if not bool(solution.ok):
                index = int(np.argmin(np.asarray(solution.valid)))
                raise DMDError(failure_message(np.asarray(times), index, solution.order_parameter[index],
                                               vg.pinned_species, int(steps[max(index - 1, 0)]), max_steps))
        else:
            solution = eqx.tree_at(lambda s: s.free_energy, solution, eqx.error_if(
                solution.free_energy, ~solution.ok, "DMD stopped: s left (-1, 1), a value became non-finite, or the "
                "ODE solver or the (X, k) relaxation failed"))
    return solution


def _trajectory(vg, values, graph, neighbors, state, times, options, adjoint):
    """The initial relaxation and a scan over the output intervals. (The host loop relaxes the
    start by a zero-length interval, which returns the same state; here a direct relaxation
    spares compiling a second ODE solve.)"""
    first, f0, ok0 = relax_state(vg, state, neighbors, options)

    def step(carry, bounds):
        start, ok = carry
        end, free_energy, ok_here, steps = interval(vg, values, graph, neighbors, start, bounds[0], bounds[1], options,
                                                    adjoint)
        return (end, ok & ok_here), (end, free_energy, ok & ok_here, steps)

    (_, ok), (states, free_energies, oks, steps) = jax.lax.scan(step, (first, ok0), (times[:-1], times[1:]))
    stack = lambda a, b: jnp.concatenate([a[None], b])
    solution = Solution(times, jax.tree_util.tree_map(stack, first, states), stack(f0, free_energies), ok,
                        stack(ok0, oks), jnp.sum(steps))
    return solution, steps


def _host_trajectory(vg, values, graph, neighbors, state, times, options, adjoint):
    """:func:`_trajectory` called on the host: the compiled interval function once per output
    interval — :func:`~dmdjax.dmd.run`'s computation exactly (so the two agree bit for bit), one
    compilation for any number of output times — stopping at the first failure (the later
    entries repeat the failed state and are not ``valid``)."""
    states, energies, oks, steps = [], [], [], []
    start, ok = state, True
    for t0, t1 in zip(times[:1].tolist() + times[:-1].tolist(), times.tolist()):
        if ok:
            end, free_energy, ok_here, taken = advance(vg, values, graph, neighbors, start, jnp.asarray(t0, times.dtype),
                                                       jnp.asarray(t1, times.dtype), options, adjoint)
            ok = bool(ok_here)
            start = end
            steps.append(int(taken))
        states.append(start)
        energies.append(free_energy)
        oks.append(ok)
    stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *states)
    solution = Solution(times, stacked, jnp.stack(energies), jnp.asarray(oks[-1]), jnp.asarray(oks),
                        jnp.asarray(sum(steps)))
    return solution, np.asarray(steps[1:] + [0] * (times.shape[0] - len(steps)))
