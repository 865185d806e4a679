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

from typing import Callable, Union

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import kinetics
from .free_energy import VGFreeEnergy
from .neighbors import NeighborList
from .relax import relax


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
        stiffness: ``(T, N)`` eV/Å²; free_energy: ``(T,)`` eV; parameters: a dict (static).
    """

    time: Float[Array, " t"]
    order_parameter: Float[Array, "t n"]
    positions: Float[Array, "t n d"]
    stiffness: Float[Array, "t n"]
    free_energy: Float[Array, " t"]
    parameters: dict = eqx.field(static=True)


def species_rate(vg: VGFreeEnergy, law: KineticLaw, graph: kinetics.BondGraph, positions, stiffness,
                 order_parameter, neighbors) -> Float[Array, " n"]:
    """ds/dt of ``law`` at a relaxed state (X, k, s)."""
    beta = vg.beta.astype(positions.dtype)
    excess = vg.excess_chemical_potential(positions, stiffness, order_parameter, neighbors)
    if isinstance(law, GradientFlow):
        mu = vg.chemical_potential(positions, stiffness, order_parameter, neighbors)
        return kinetics.gradient_flow(order_parameter, mu, graph, law.mobility)
    if isinstance(law, SpinDiffusion):
        if law.variant == "exact":
            coupling = kinetics.pair_coupling(vg, positions, stiffness, neighbors, graph)
            divided = kinetics.swap_divided_difference(order_parameter, excess, coupling, graph)
        elif law.variant == "gradient":
            divided = kinetics.gradient_divided_difference(excess, graph)
        else:
            raise ValueError(f"SpinDiffusion.variant must be 'exact' or 'gradient'; got {law.variant!r}")
        return kinetics.spin_diffusion(order_parameter, divided, graph, beta, law.tau)
    if isinstance(law, MasterEquation):
        return kinetics.master_equation(order_parameter, excess, graph, beta, law.attempt_frequency,
                                        law.activation_energy)
    raise TypeError(f"unknown kinetic law {type(law).__name__}")


@eqx.filter_jit
def _advance(vg, law, graph, neighbors, positions, stiffness, order_parameter, t0, t1, solver, rtol, atol,
             max_steps, tolerance):
    def vector_field(t, s, args):
        relaxed = relax(vg, positions, s, neighbors, stiffness, tolerance=tolerance, throw=False)
        return species_rate(vg, law, graph, relaxed.positions, relaxed.stiffness, s, neighbors)

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), solver, t0, t1, None, order_parameter,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps, throw=False,
        saveat=diffrax.SaveAt(t1=True),
    )
    s1 = solution.ys[-1]
    relaxed = relax(vg, positions, s1, neighbors, stiffness, tolerance=tolerance, throw=False)
    ok = (solution.result == diffrax.RESULTS.successful) & relaxed.converged
    return s1, relaxed.positions, relaxed.stiffness, relaxed.free_energy, ok


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
    max_steps: int = 4096,
    tolerance: float | None = None,
    progress: bool = False,
) -> Trajectory:
    """Integrate s(t) from ``save_times[0]`` through every later output time.

    Arguments:
        vg: the free energy (its ``pinned_species`` sites do not evolve and carry no flux).
        positions, order_parameter: the initial state (X is relaxed first).
        stiffness: initial k (warm start). Passing a recorded state (s, X, k) of a trajectory
            resumes that run exactly: its relaxation is already converged.
        neighbors: neighbour list for the whole run (positions move little in DMD).
        law: :class:`GradientFlow`, :class:`SpinDiffusion` or :class:`MasterEquation`.
        save_times: increasing output times; the first is the start time.
        kinetic_cutoff: bond length for exchanges, Å.
        solver: a diffrax solver (default ``Tsit5``; ``Kvaerno5`` for stiff cases).
        rtol, atol, max_steps: diffrax step control per output interval.
        tolerance: relaxation tolerance (default: that of :func:`~dmdjax.relax`).
        progress: show a progress bar over output intervals.

    Raises:
        DMDError: naming the time and sites, when s leaves (−1, 1), a value is non-finite,
            or the solver fails; the trajectory recorded so far is attached as ``error.trajectory``.
    """
    times = np.asarray(save_times, dtype=float)
    if times.ndim != 1 or times.size < 2 or np.any(np.diff(times) <= 0):
        raise ValueError(f"save_times must be increasing with at least two entries; got {times.tolist()}")
    solver = diffrax.Tsit5() if solver is None else solver
    graph = kinetics.bond_graph(positions, vg.cell, neighbors, kinetic_cutoff, pinned_species=vg.pinned_species)
    start = relax(vg, positions, order_parameter, neighbors, stiffness, tolerance=tolerance)
    state = (order_parameter, start.positions, start.stiffness, start.free_energy)
    record = [state]
    parameters = {"law": type(law).__name__, "law_parameters": {k: v for k, v in vars(law).items()
                                                                 if isinstance(v, (int, float, str))},
                  "temperature": float(vg.temperature), "kinetic_cutoff": kinetic_cutoff,
                  "quadrature": vg.quadrature, "nodes": vg.nodes, "rtol": rtol, "atol": atol,
                  "solver": type(solver).__name__}
    intervals = range(1, times.size)
    if progress:
        from tqdm.auto import tqdm

        intervals = tqdm(intervals, desc="DMD", unit="interval")
    for index in intervals:
        s0, x0, k0, _ = state
        s1, x1, k1, f1, ok = _advance(vg, law, graph, neighbors, x0, k0, s0, times[index - 1], times[index],
                                      solver, rtol, atol, max_steps, tolerance)
        bad = ~np.isfinite(np.asarray(s1)) | (np.abs(np.asarray(s1)) >= 1.0)
        if not bool(ok) or np.any(bad) or not np.isfinite(float(f1)):
            trajectory = _trajectory(times[: len(record)], record, parameters)
            sites = np.flatnonzero(bad).tolist()
            error = DMDError(
                f"DMD stopped in ({times[index - 1]:g}, {times[index]:g}]: "
                + (f"s left (-1, 1) or became non-finite at sites {sites}" if sites else
                   "the ODE solver or the (X, k) relaxation failed")
                + f"; the last good state is at t = {times[len(record) - 1]:g}"
            )
            error.trajectory = trajectory
            raise error
        state = (s1, x1, k1, f1)
        record.append(state)
    return _trajectory(times, record, parameters)


def _trajectory(times, record, parameters) -> Trajectory:
    s, x, k, f = (jnp.stack(items) for items in zip(*record))
    return Trajectory(jnp.asarray(times), s, x, k, f, parameters)
