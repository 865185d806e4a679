r"""Quasistatic relaxation of (X, k) at fixed species: the fast process of DMD (DESIGN.md §3).

.. math::

    (X^*, k^*) = \arg\min_{X, k} F(X, k, s)

minimised over ``(X, log k)`` — k stays positive by construction — with optax's L-BFGS
and its zoom line search, from the first guess k_i = tr ∇²_ii V / d (the second-order
expansion of (F1); exact for harmonic V) or from a warm start. Pinned atoms keep their
positions. The run stops when the largest component of ∇F over (X, log k) — eV/Å for
X, eV for log k — is below ``tolerance``, and reports the iterations and the final
gradient norm; a run that does not converge raises (``throw=True``) or is flagged.

Derivatives of (X*, k*) with respect to everything in the free-energy object (potential
parameters, temperature, cell) and s come from the implicit function theorem at the
minimum (∇_y F = 0 ⇒ dy*/dθ = −H⁻¹ ∂_θ ∇_y F), solved matrix-free by conjugate gradients
on Hessian-vector products — never by back-propagating through the iterations. The rule
is a custom JVP (a linear solve that JAX transposes), so forward mode (``jax.jvp``,
``jax.jacfwd``, the Jacobians of diffrax's implicit solvers) and reverse mode both work.
The initial positions are treated as constants (they fix the pinned atoms).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu
from jaxtyping import Array, Bool, Float, Int

from . import _validate
from .free_energy import VGFreeEnergy
from .neighbors import NeighborList
from .state import DMDState, HoldsState


class RelaxResult(HoldsState):
    """Outcome of :func:`relax`.

    Attributes:
        state: the relaxed :class:`~dmdjax.DMDState` (X*, k*, s): k* ``(N,)`` eV/Å² on pinned
            atoms is their input value; s is the input's.
        free_energy: F(X*, k*, s), eV.
        iterations: iterations taken (L-BFGS or Newton).
        gradient_norm: final max |∂F/∂X| (eV/Å) and |k ∂F/∂k| (eV) over unpinned atoms
            (inf when Newton's method ended where the Hessian is not positive definite).
        converged: ``gradient_norm <= tolerance``, F finite and ``neighbors`` covering the
            free energy's interaction range at the result.
        neighbors: the neighbour list the result was computed with and is valid for: the
            list passed in, or one :func:`relax` rebuilt because atoms moved or k softened.

    ``result.positions`` and ``result.stiffness`` are shortcuts for ``result.state.positions``
    and ``result.state.stiffness``.
    """

    state: DMDState
    free_energy: Float[Array, ""]
    iterations: Int[Array, ""]
    gradient_norm: Float[Array, ""]
    converged: Bool[Array, ""]
    neighbors: NeighborList | None = None




def initial_stiffness(vg: VGFreeEnergy, positions, order_parameter, neighbors: NeighborList) -> Float[Array, " n"]:
    """First guess k_i = tr ∇²_ii V / d at X (mean-field species), floored at 5 % of the largest.

    Atoms at unstable or nearly free sites (negative or tiny curvature) get the floor
    (:meth:`~dmdjax.free_energy.VGFreeEnergy.initial_stiffness`).
    """
    return vg.initial_stiffness(positions, order_parameter, neighbors)


def default_tolerance(dtype) -> float:
    """The default relaxation tolerance on max |∇F| over (X, log k): 1e-6 in float64, 1e-3 in float32."""
    return 1e-6 if jnp.dtype(dtype) == jnp.float64 else 1e-3


RELAX_METHODS = ("lbfgs", "newton")


def check_method(method: str, colouring=None) -> None:
    """``ValueError`` unless ``method`` is one of :data:`RELAX_METHODS` and a ``colouring`` is
    given only with ``"newton"``."""
    if method not in RELAX_METHODS:
        raise ValueError(f"method must be one of {RELAX_METHODS}; got {method!r}")
    if colouring is not None and method != "newton":
        raise ValueError(f"a Hessian colouring is for method='newton'; got method={method!r} with a colouring")


def _objective(y, params, anchor, neighbors):
    vg, order_parameter = params
    positions, log_stiffness = y
    positions = jnp.where(vg.pinned[:, None], anchor, positions)
    stiffness = jnp.exp(jnp.where(vg.pinned_stiffness, 0.0, log_stiffness))
    return vg(DMDState(positions, stiffness, order_parameter), neighbors)


def _mask_pinned(tree, pinned):
    positions, log_stiffness = tree
    per_site = pinned.reshape(pinned.shape + (1,) * (log_stiffness.ndim - 1))  # k: (N,) or (N, 2)
    return jnp.where(pinned[:, None], 0.0, positions), jnp.where(per_site, 0.0, log_stiffness)


def _constant(tree):
    """Stop gradients on the float leaves (start point, anchor and neighbour list are constants)."""
    return jax.tree_util.tree_map(lambda x: jax.lax.stop_gradient(x) if eqx.is_inexact_array(x) else x, tree)


def _max_abs(tree):
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in jax.tree_util.tree_leaves(tree)]))


class HessianColouring(eqx.Module):
    """Which Hessian entries of F over (X, log k) can be non-zero, and a colouring of the atoms
    such that no two atoms of one colour share a row: the dense Hessian then follows from
    ``n_colours · (d + 1)`` Hessian-vector products (Curtis–Powell–Reid compression).

    Attributes:
        colour: ``(N,)`` colour of each atom. rows, cols: ``(P,)`` atom pairs (r, a), r = a
        included, whose (d+1)×(d+1) Hessian block may be non-zero. n_colours: static.
    """

    colour: Int[Array, " n"]
    rows: Int[Array, " p"]
    cols: Int[Array, " p"]
    n_colours: int = eqx.field(static=True)


def hessian_colouring(vg: VGFreeEnergy, neighbors: NeighborList) -> HessianColouring:
    """The sparsity and colouring of ∇²F for :func:`relax` with ``method="newton"``.

    Atoms interact with their listed neighbours (pair terms) and, for embedded-atom
    potentials, with their neighbours' neighbours (through the host density). Greedy
    colouring of the distance-2 graph; for a chain it gives 2b + 1 colours (b the largest
    index offset of a neighbour), whatever N. Runs in NumPy: call it outside ``jit``.
    """
    idx = _validate.host_array(neighbors.idx)
    n = idx.shape[0]
    adjacency = [set(row[row < n].tolist()) | {i} for i, row in enumerate(idx)]
    if vg.potential.is_embedded:
        adjacency = [set().union(*(adjacency[j] for j in near)) for near in adjacency]
    colour = np.full(n, -1)
    for atom in range(n):
        taken = {colour[k] for j in adjacency[atom] for k in adjacency[j]}
        colour[atom] = next(c for c in range(n) if c not in taken)
    rows = np.concatenate([np.full(len(near), r) for r, near in enumerate(adjacency)])
    cols = np.concatenate([sorted(near) for near in adjacency])
    return HessianColouring(jnp.asarray(colour, jnp.int32), jnp.asarray(rows, jnp.int32),
                            jnp.asarray(cols, jnp.int32), int(colour.max()) + 1)


#: Hessian-vector products evaluated at once for Newton's dense Hessian (bounds its memory).
HESSIAN_BLOCK = 32


def dense_hessian(gradient, y, colouring: HessianColouring):
    """∇²F as a dense ``(N(d+1), N(d+1))`` matrix from compressed Hessian-vector products."""
    n, width = y.shape
    directions = (colouring.colour[None, :, None] == jnp.arange(colouring.n_colours)[:, None, None])
    directions = directions[:, None] & (jnp.arange(width)[None, :, None, None] == jnp.arange(width))
    directions = directions.astype(y.dtype).reshape(-1, n, width)  # (C·(d+1), N, d+1)
    # In blocks of HESSIAN_BLOCK products: all at once, a 108-atom EAM cluster (432 products)
    # needed 7.7 GB.
    products = jax.lax.map(lambda v: jax.jvp(gradient, (y,), (v,))[1], directions, batch_size=HESSIAN_BLOCK)
    products = products.reshape(colouring.n_colours, width, n, width)  # [c, q, r, p]
    values = products[colouring.colour[colouring.cols], :, colouring.rows, :]  # (P, q, p)
    hessian = jnp.zeros((n, width, n, width), y.dtype)
    hessian = hessian.at[colouring.rows, :, colouring.cols, :].set(jnp.swapaxes(values, 1, 2))
    return hessian.reshape(n * width, n * width)


def _newton(objective, y0, pinned, colouring, tolerance, max_steps):
    """Damped Newton on the flat unknowns z = (X, log k) per atom, ``(N, d+1)``, with an
    Armijo backtracking line search on F.

    Negative-curvature safeguard: where the Hessian is not positive semi-definite (the Cholesky
    factorisation of H + 10⁻¹⁰ max|H_ii| I fails; the shift admits the exact zero modes of
    rigid motions) the step is the saddle-free Newton step −Σ_q (v_qᵀg)/|λ_q| v_q plus a
    unit move along the eigenvector of the lowest eigenvalue, oriented downhill; the run only
    stops at a point whose gradient is below ``tolerance`` *and* whose last Hessian was
    positive definite, so it cannot report a saddle as converged. Steps that are not descent
    directions fall back to −∇F.
    """
    n, d = y0[0].shape
    stiffness_shape = y0[1].shape  # (N,) or, with per-species widths, (N, 2)
    to_flat = lambda y: jnp.concatenate([y[0], y[1].reshape(n, -1)], axis=1)
    to_tree = lambda z: (z[:, :d], z[:, d:].reshape(stiffness_shape))
    flat_objective = lambda z: objective(to_tree(z))
    gradient = jax.grad(flat_objective)
    width = to_flat(y0).shape[1]
    free = jnp.broadcast_to(~pinned[:, None], (n, width)).reshape(-1)

    def masked_gradient(z):
        return jnp.where(free, gradient(z).reshape(-1), 0.0)

    def cond(carry):
        _, g, iteration, value, positive = carry
        return (iteration < max_steps) & ((jnp.max(jnp.abs(g)) > tolerance) | ~positive) & jnp.isfinite(value)

    def body(carry):
        z, g, iteration, value, _ = carry
        hessian = dense_hessian(gradient, z, colouring)
        hessian = jnp.where(free[:, None] & free[None, :], hessian, 0.0) + jnp.diag(~free)
        hessian = 0.5 * (hessian + hessian.T)
        # Positive (semi-)definite up to rounding: free clusters have six exact zero modes.
        shift = 1e-10 * jnp.maximum(jnp.max(jnp.abs(jnp.diag(hessian))), 1.0)
        factor = jnp.linalg.cholesky(hessian + shift * jnp.eye(g.size, dtype=g.dtype))
        positive = jnp.all(jnp.isfinite(factor))

        def newton_step():
            return jax.scipy.linalg.cho_solve((factor, True), -g)

        def curvature_step():
            eigenvalues, vectors = jnp.linalg.eigh(hessian)
            floor = jnp.maximum(1e-8 * jnp.max(jnp.abs(eigenvalues)), jnp.finfo(g.dtype).tiny)
            step = -vectors @ ((vectors.T @ g) / jnp.maximum(jnp.abs(eigenvalues), floor))
            lowest = vectors[:, 0]
            downhill = jnp.where(jnp.dot(lowest, g) > 0, -lowest, lowest)
            return step + downhill

        step = jax.lax.cond(positive, newton_step, curvature_step)
        slope = jnp.dot(g, step)
        descent = jnp.isfinite(slope) & (slope <= 0)
        step = jnp.where(descent, step, -g / jnp.maximum(jnp.max(jnp.abs(jnp.diag(hessian))), 1.0))
        slope = jnp.where(descent, slope, jnp.dot(g, step))

        def shorter(state):
            alpha, _ = state
            return alpha / 2, flat_objective(z + (alpha / 2) * step.reshape(n, width))

        # Armijo, with F's rounding level as slack: near the minimum the decrease of F is
        # below rounding while Newton still halves the gradient's digits. Off the convex
        # region F must really decrease (no slack), so a saddle is left, not approached.
        rounding = jnp.where(positive, 64 * jnp.finfo(z.dtype).eps * jnp.abs(value), 0.0)

        def too_long(state):
            alpha, trial = state
            return (alpha > 1e-10) & ~(trial <= value + 1e-4 * alpha * slope + rounding)

        alpha, new_value = jax.lax.while_loop(too_long, shorter,
                                              (jnp.ones((), z.dtype), flat_objective(z + step.reshape(n, width))))
        moved = (alpha > 1e-10) | positive  # no acceptable step off the convex region: stay
        z = jnp.where(moved, z + alpha * step.reshape(n, width), z)
        new_value = jnp.where(moved, new_value, value)
        # The gradient is carried, not recomputed.
        return z, masked_gradient(z), iteration + 1, new_value, positive

    z0 = to_flat(y0)
    # The curvature is not known at the start: at least one Hessian is looked at, so a start at a
    # saddle (zero gradient by symmetry) is left, not reported as converged.
    carry = (z0, masked_gradient(z0), jnp.asarray(0), flat_objective(z0), jnp.asarray(False))
    z, g, iterations, _, positive = jax.lax.while_loop(cond, body, carry)
    # A run that ended at a point of negative curvature is not converged: report it by the norm.
    norm = jnp.where(positive, jnp.max(jnp.abs(g)), jnp.inf)
    return to_tree(z), iterations, norm


@eqx.filter_custom_jvp
def _argmin(params, y0, anchor, neighbors, tolerance, max_steps, memory, colouring):
    vg = params[0]
    objective = lambda y: _objective(y, params, anchor, neighbors)
    if colouring is not None:
        return _newton(objective, y0, vg.pinned, colouring, tolerance, max_steps)
    return _lbfgs(objective, y0, lambda gradient: _max_abs(_mask_pinned(gradient, vg.pinned)), tolerance, max_steps,
                  memory)


def _lbfgs(objective, y0, gradient_norm, tolerance, max_steps, memory):
    """optax's L-BFGS (zoom line search) in a ``lax.while_loop`` until ``gradient_norm(∇) <=
    tolerance``: ``(y, iterations, norm)``."""
    solver = optax.lbfgs(memory_size=memory)
    value_and_grad = optax.value_and_grad_from_state(objective)

    def cond(carry):
        _, _, iteration, norm, value = carry
        return (iteration < max_steps) & (norm > tolerance) & jnp.isfinite(value)

    def body(carry):
        y, state, iteration, _, _ = carry
        value, gradient = value_and_grad(y, state=state)
        updates, state = solver.update(gradient, state, y, value=value, grad=gradient, value_fn=objective)
        y = optax.apply_updates(y, updates)
        new_value = otu.tree_get(state, "value")
        return y, state, iteration + 1, gradient_norm(otu.tree_get(state, "grad")), new_value

    value0, gradient0 = jax.value_and_grad(objective)(y0)
    carry = (y0, solver.init(y0), jnp.asarray(0), gradient_norm(gradient0), value0)
    y, _, iterations, norm, _ = jax.lax.while_loop(cond, body, carry)
    return y, iterations, norm


@_argmin.def_jvp
def _argmin_jvp(primals, tangents):
    """Implicit tangent dy* = −H⁻¹ (∂_θ ∇_y F) dθ, linear in dθ: reverse mode transposes it."""
    params, y0, anchor, neighbors, tolerance, max_steps, memory, colouring = primals
    out = _argmin(*primals)
    y_star = out[0]
    param_tangent = jax.tree_util.tree_map(
        lambda t, p: jnp.zeros_like(p) if t is None else t, tangents[0], params,
        is_leaf=lambda x: x is None,
    )
    param_tangent = eqx.filter(param_tangent, eqx.is_inexact_array)
    vg = params[0]
    gradient = lambda y, p: jax.grad(_objective)(y, p, anchor, neighbors)
    _, mixed = eqx.filter_jvp(lambda p: gradient(y_star, p), (params,), (param_tangent,))
    mixed = _mask_pinned(mixed, vg.pinned)

    def hessian_vector(v):
        # mask(H mask(v)) + (v - mask(v)): the identity on pinned components keeps it non-singular.
        masked_v = _mask_pinned(v, vg.pinned)
        hv = jax.jvp(lambda y: gradient(y, params), (y_star,), (masked_v,))[1]
        return jax.tree_util.tree_map(lambda h, full, m: h + full - m, _mask_pinned(hv, vg.pinned), v, masked_v)

    cg_tolerance = 1e-12 if y_star[0].dtype == jnp.float64 else 1e-6
    solve = lambda matvec, b: jax.scipy.sparse.linalg.cg(matvec, b, tol=cg_tolerance)[0]
    step = jax.lax.custom_linear_solve(hessian_vector, mixed, solve, symmetric=True)
    y_tangent = jax.tree_util.tree_map(jnp.negative, step)
    return out, (y_tangent, None, None)  # iterations and the norm: no tangent


def relax(
    vg: VGFreeEnergy,
    state: DMDState,
    neighbors: NeighborList,
    *,
    method: str = "lbfgs",
    tolerance: float | None = None,
    max_steps: int = 2000,
    memory: int = 20,
    throw: bool = True,
    colouring: HessianColouring | None = None,
) -> RelaxResult:
    """Minimise F(X, k, s) over (X, k) at fixed s.

    Arguments:
        vg: the :class:`~dmdjax.free_energy.VGFreeEnergy`.
        state: the start (or warm start) (X, k, s): X ``(N, d)`` Å (pinned atoms stay), k
            ``(N,)`` eV/Å², s ``(N,)`` held fixed. A cold start is
            ``vg.initial_state(positions, order_parameter, neighbors)`` (k from
            :func:`initial_stiffness`).
        neighbors: a neighbour list. On the host, :func:`relax` rebuilds it where it does not
            cover the free energy's interaction range (cut-off + the Gaussians' reach) at the
            start or at the result, and relaxes again from there; the list the result is valid
            for is ``RelaxResult.neighbors``. Inside ``jit``/``grad`` it cannot: give a list
            that covers the states visited (e.g. a previous result's ``neighbors``), or the
            result is ``converged=False``.
        method: ``"lbfgs"`` (the default; any size) or ``"newton"``: damped Newton,
            safeguarded against negative curvature (it never stops at a saddle), with the
            dense Hessian from compressed Hessian-vector products (:func:`hessian_colouring`)
            — a few iterations where L-BFGS needs hundreds (ill-conditioned chains: the
            condition number grows as N²), at O((N(d+1))³) per iteration: for systems up to
            a few thousand unknowns.
        tolerance: convergence threshold on max |∇F| over (X, log k); default
            :func:`default_tolerance` (1e-6 in float64, 1e-3 in float32).
        max_steps: iteration limit.
        memory: L-BFGS history length.
        throw: raise (also under jit, via ``equinox.error_if``) when not converged.
        colouring: ``"newton"`` only: a precomputed :func:`hessian_colouring` of ``neighbors``
            (needed inside ``jit``, where it cannot be computed; built on the host otherwise).

    Returns:
        A :class:`RelaxResult`. Differentiable (implicitly) in ``vg`` and the state's s.

    Raises:
        RelaxationError: ``throw`` and not converged (inside ``jit``: ``equinox.error_if``).
        ValueError: bad inputs, e.g. a tolerance that is not > 0, an unknown method or
            coincident atoms.
    """
    vg.check(state, neighbors)
    check_method(method, colouring)
    positions, stiffness, order_parameter = state.positions, state.stiffness, state.order_parameter
    tolerance = default_tolerance(positions.dtype) if tolerance is None else tolerance
    if _validate.is_concrete(tolerance) and not (np.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be finite and > 0; got {tolerance!r}")
    traced = not _validate.on_host((vg, state, neighbors))
    if method == "newton" and colouring is None:
        if traced:
            raise ValueError("relax(method='newton') inside jit needs colouring=hessian_colouring(vg, neighbors), "
                             "computed outside")
        colouring = hessian_colouring(vg, neighbors)
    # The tolerance is traced: runs that differ only in it share one compiled relaxation.
    tolerance = jnp.asarray(tolerance, positions.dtype)
    if traced:
        # Inside jit: a result from a list that does not cover it is reported as not converged.
        # Called unjitted: a nested jit would compare jax-md's list metadata (which holds an array)
        # with that of another list inside this trace, which JAX cannot do.
        return _relax_traced(vg, positions, order_parameter, neighbors, stiffness, tolerance, max_steps, memory,
                             throw, colouring)
    # Host side: rebuild the list where atoms moved too far or k softened, and relax again from there.
    anchor, iterations = positions, 0
    for _ in range(MAX_REBUILDS + 1):
        covering = vg.covering_neighbors(DMDState(positions, stiffness, order_parameter), neighbors)
        if method == "newton" and covering is not neighbors:  # more pairs: a new sparsity pattern
            colouring = hessian_colouring(vg, covering)
        neighbors = covering
        result = _relax(vg, anchor, order_parameter, neighbors, stiffness, tolerance, max_steps, memory, False,
                        colouring, positions)
        iterations += int(result.iterations)
        if not np.all(np.isfinite(_validate.host_array(result.positions))) or float(
                vg.neighbor_fault(result.state, neighbors)) <= 0:
            break
        positions, stiffness = result.positions, result.stiffness
    result = eqx.tree_at(lambda r: r.iterations, result, jnp.asarray(iterations, result.iterations.dtype))
    if throw and not bool(result.converged):
        reason = ""
        if np.all(np.isfinite(_validate.host_array(result.positions))):
            try:  # the list cannot cover the result: a cell too small for the Gaussians' reach
                vg.check_neighbors(result.state, neighbors)
            except ValueError as err:
                reason = f"; the result is not covered by a neighbour list: {err}"
        raise RelaxationError(f"{NOT_CONVERGED}; last gradient norm {float(result.gradient_norm):.3g} after "
                              f"{iterations} iterations, tolerance {float(tolerance):.3g}{reason}")
    return result


class RelaxationError(eqx.EquinoxRuntimeError):
    """:func:`relax` with ``throw=True`` did not converge (raised on the host; under ``jit`` the
    same condition raises through ``equinox.error_if``)."""


#: How often :func:`relax` rebuilds the neighbour list and relaxes again before it gives up.
MAX_REBUILDS = 4
NOT_CONVERGED = ("relaxation of (X, k) did not converge: gradient norm above the tolerance after max_steps "
                 "iterations, a saddle point (Newton), a non-finite free energy, or atoms that moved beyond the "
                 "neighbour list (check the structure, raise max_steps or loosen tolerance)")


def _relax_traced(vg, positions, order_parameter, neighbors, stiffness, tolerance, max_steps, memory, throw, colouring=None,
           start=None):
    """The relaxation from (``start``, ``stiffness``) (default ``positions``); pinned atoms stay at
    ``positions``. Not converged where ``neighbors`` does not cover the result."""
    dtype = positions.dtype
    start = positions if start is None else start
    y0 = (start, jnp.log(jnp.where(vg.pinned_stiffness, 1.0, stiffness.astype(dtype))))
    y, iterations, norm = _argmin((vg, order_parameter), _constant(y0), _constant(positions),
                                  _constant(neighbors), tolerance, max_steps, memory, colouring)
    relaxed_positions = jnp.where(vg.pinned[:, None], positions, y[0])
    relaxed_stiffness = jnp.where(vg.pinned_stiffness, stiffness.astype(dtype), jnp.exp(y[1]))
    relaxed = DMDState(relaxed_positions, relaxed_stiffness, order_parameter)
    free_energy = vg(relaxed, neighbors)
    norm = jax.lax.stop_gradient(norm)
    covered = jax.lax.stop_gradient(vg.neighbor_fault(relaxed, neighbors) <= 0)
    converged = (norm <= tolerance) & jnp.isfinite(free_energy) & covered
    if throw:
        relaxed = eqx.tree_at(lambda r: r.positions, relaxed, eqx.error_if(relaxed_positions, ~converged,
                                                                             NOT_CONVERGED))
    return RelaxResult(relaxed, free_energy, iterations, norm, converged, neighbors)


_relax = eqx.filter_jit(_relax_traced)


class StaticsResult(eqx.Module):
    """Outcome of :func:`minimize_energy`: ``positions`` ``(N, d)`` Å, ``energy`` eV, ``iterations``,
    ``force_norm`` (max |F| over unpinned atoms, eV/Å), ``converged`` and the valid ``neighbors``."""

    positions: Float[Array, "n d"]
    energy: Float[Array, ""]
    iterations: Int[Array, ""]
    force_norm: Float[Array, ""]
    converged: Bool[Array, ""]
    neighbors: NeighborList


def minimize_energy(potential, positions, species, cell, neighbors: NeighborList, *, pinned=None,
                    tolerance: float | None = None, max_steps: int = 10_000, memory: int = 20,
                    throw: bool = True) -> StaticsResult:
    """Molecular statics on the device: min V(X) over unpinned positions at fixed ``species``
    (integer indices or mean-field weights), by the L-BFGS of :func:`relax` in one compiled
    loop with the analytic forces of :func:`dmdjax.potential_energy`.

    Arguments:
        potential, positions ``(N, d)`` Å, species, cell, neighbors: as :func:`dmdjax.potential_energy`.
        pinned: ``(N,)`` atoms held in place (default none).
        tolerance: max |force| to reach, eV/Å (> 0); default :func:`default_tolerance`.
        max_steps, memory: L-BFGS limits.
        throw: raise :class:`RelaxationError` when not converged.

    On the host the list is refreshed and the minimisation continued while atoms moved more
    than half the list's skin (then it no longer holds every pair within the cut-off).
    """
    tolerance = default_tolerance(positions.dtype) if tolerance is None else tolerance
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be finite and > 0 eV/Å; got {tolerance!r}")
    n = positions.shape[0]
    pinned = jnp.zeros((n,), bool) if pinned is None else jnp.asarray(pinned, bool)
    anchor, start, iterations = positions, positions, 0
    from .neighbors import refresh

    for _ in range(MAX_REBUILDS + 1):
        moved, energy, steps, norm = _minimize_energy(potential, anchor, start, species, cell, neighbors, pinned,
                                                      jnp.asarray(tolerance, positions.dtype), max_steps, memory)
        iterations += int(steps)
        # The list holds every pair within the cut-off while no atom moved more than skin/2.
        covered = float(neighbors.max_displacement(moved)) <= 0.5 * neighbors.skin
        if covered or not bool(jnp.isfinite(energy)):
            break
        neighbors, start = refresh(neighbors, moved, cell), moved
    # A result whose list no longer covers it is not converged (its energy may miss pairs).
    converged = bool(norm <= tolerance) and bool(jnp.isfinite(energy)) and covered
    if throw and not converged:
        raise RelaxationError(f"molecular statics did not converge: max force {float(norm):.3g} eV/Å after "
                              f"{iterations} iterations, tolerance {tolerance:.3g} eV/Å")
    return StaticsResult(moved, energy, jnp.asarray(iterations), norm, jnp.asarray(converged), neighbors)


@eqx.filter_jit
def _minimize_energy(potential, anchor, start, species, cell, neighbors, pinned, tolerance, max_steps, memory):
    from .energy import potential_energy

    def objective(x):
        return potential_energy(potential, jnp.where(pinned[:, None], anchor, x), species, cell, neighbors)

    def force_norm(gradient):
        return _max_abs(jnp.where(pinned[:, None], 0.0, gradient))

    x, iterations, norm = _lbfgs(objective, start, force_norm, tolerance, max_steps, memory)
    x = jnp.where(pinned[:, None], anchor, x)
    return x, objective(x), iterations, norm


def relax_stiffness(vg: VGFreeEnergy, state: DMDState, neighbors: NeighborList, *, exchange_potential=None,
                    tolerance: float | None = None, max_steps: int = 2000, memory: int = 20,
                    throw: bool = True) -> RelaxResult:
    """Minimise F(X, k, s) over k at fixed mean positions X — and, given ``exchange_potential``
    Δμ (eV), also over s: min_{k, s} F − Δμ Σ_i s_i, the semi-grand-canonical equilibrium in
    which every site's μ_i = ∂F/∂s_i equals Δμ (s = tanh u, so |s| < 1; pinned species keep
    theirs). F at the result is the free energy of the structure X at temperature; −∂F/∂X the
    forces on X and :meth:`~dmdjax.VGFreeEnergy.stress` its stress (the envelope theorem).
    Used by :class:`dmdjax.ase.FreeEnergyCalculator`.

    Arguments:
        vg, state, neighbors: as :func:`relax` (the state's X and, without ``exchange_potential``,
            s held fixed; its k the start). The list is rebuilt on the host where it does not
            cover the result (k softened), as in :func:`relax`.
        exchange_potential: None (s fixed) or Δμ in eV.
        tolerance: on max |k ∂F/∂k| (eV) and, with s free, max |∂(F − Δμ Σs)/∂u| (eV); default
            :func:`default_tolerance`.
        max_steps, memory, throw: as :func:`relax`.

    Returns:
        A :class:`RelaxResult` (``free_energy`` is F, without −Δμ Σ s). Not differentiable
        implicitly (use :func:`relax` for that); host side only.

    Raises:
        RelaxationError: ``throw`` and not converged.
    """
    tolerance = _host_arguments("relax_stiffness", vg, state, neighbors, tolerance)
    if exchange_potential is not None:
        _validate.finite(np.asarray(exchange_potential), "exchange_potential")
        exchange_potential = jnp.asarray(exchange_potential, state.positions.dtype)
    iterations = 0
    for _ in range(MAX_REBUILDS + 1):
        neighbors = vg.covering_neighbors(state, neighbors)
        state, free_energy, steps, norm = _relax_stiffness(vg, state, neighbors, exchange_potential,
                                                           jnp.asarray(tolerance, state.positions.dtype),
                                                           max_steps, memory)
        iterations += int(steps)
        if not bool(jnp.isfinite(free_energy)) or float(vg.neighbor_fault(state, neighbors)) <= 0:
            break
    what = "k" if exchange_potential is None else "k and s"
    return _host_result(f"{what} at fixed X", vg, state, free_energy, iterations, norm, neighbors, tolerance, throw)


def _host_arguments(name, vg, state, neighbors, tolerance) -> float:
    """The checks shared by the host-side relaxations: the state, host (not traced) arrays and
    the tolerance (default :func:`default_tolerance`), which is returned."""
    vg.check(state, neighbors)
    if not _validate.on_host((vg, state, neighbors)):
        raise ValueError(f"{name} runs on the host (not inside jit/grad/vmap)")
    tolerance = default_tolerance(state.positions.dtype) if tolerance is None else tolerance
    if not (np.isfinite(tolerance) and tolerance > 0):
        raise ValueError(f"tolerance must be finite and > 0; got {tolerance!r}")
    return tolerance


def _host_result(what, vg, state, free_energy, iterations, norm, neighbors, tolerance, throw) -> RelaxResult:
    """The :class:`RelaxResult` of a host-side relaxation of ``what``: converged where the norm is
    within ``tolerance``, F is finite and ``neighbors`` covers the state; else, with ``throw``, a
    :class:`RelaxationError`."""
    converged = bool(norm <= tolerance) and bool(jnp.isfinite(free_energy)) and float(
        vg.neighbor_fault(state, neighbors)) <= 0
    if throw and not converged:
        raise RelaxationError(f"relaxation of {what} did not converge: gradient norm {float(norm):.3g} after "
                              f"{iterations} iterations, tolerance {tolerance:.3g}")
    return RelaxResult(state, free_energy, jnp.asarray(iterations), norm, jnp.asarray(converged), neighbors)


@eqx.filter_jit
def _relax_stiffness(vg, state, neighbors, exchange_potential, tolerance, max_steps, memory):
    dtype = state.positions.dtype
    positions, s0 = state.positions, state.order_parameter.astype(dtype)
    k0 = state.stiffness.astype(dtype)
    pinned_k = vg.pinned_stiffness
    free_s = ~vg.pinned_species

    def unpack(y):
        stiffness = jnp.where(pinned_k, k0, jnp.exp(y[0]))
        s = s0 if exchange_potential is None else jnp.where(free_s, jnp.tanh(y[1]), s0)
        return DMDState(positions, stiffness, s)

    def objective(y):
        current = unpack(y)
        value = vg(current, neighbors)
        if exchange_potential is not None:
            value = value - exchange_potential * jnp.sum(current.order_parameter)
        return value

    log_k = jnp.log(jnp.where(pinned_k, 1.0, k0))
    y0 = (log_k,) if exchange_potential is None else (log_k, jnp.arctanh(jnp.clip(s0, -1 + 1e-6, 1 - 1e-6)))

    def gradient_norm(gradient):
        masked = (jnp.where(pinned_k, 0.0, gradient[0]),) + tuple(jnp.where(free_s, g, 0.0) for g in gradient[1:])
        return _max_abs(masked)

    y, iterations, norm = _lbfgs(objective, y0, gradient_norm, tolerance, max_steps, memory)
    relaxed = unpack(y)
    return relaxed, vg(relaxed, neighbors), iterations, norm


def relax_cell(vg: VGFreeEnergy, state: DMDState, neighbors: NeighborList, *, pressure=0.0,
               tolerance: float | None = None, max_steps: int = 2000, memory: int = 20,
               throw: bool = True) -> tuple[VGFreeEnergy, RelaxResult]:
    """Minimise F(X, k, s) + P V over (X, k) and the cell at fixed s: the VG state at temperature
    and hydrostatic pressure P (zero free-energy stress at P = 0: the thermal expansion of
    the VG model). The cell strains by X → (I + ε) X, cell → (I + ε) cell, ε symmetric and
    confined to the periodic directions; L-BFGS over (X in the unstrained frame, log k, ε).

    Arguments:
        vg, state, neighbors: as :func:`relax`; no pinned atoms.
        pressure: P in eV/Å³ (``dmdjax.units.EV_PER_A3_TO_GPA`` converts), default 0.
        tolerance: on max |∂/∂X| (eV/Å), |∂/∂log k| (eV) and |∂/∂ε| = V |σ_F + P| (eV);
            default :func:`default_tolerance`.
        max_steps, memory, throw: as :func:`relax`.

    Returns:
        ``(vg, result)``: the free energy on the relaxed cell (``vg.cell``) and the
        :class:`RelaxResult` there (``free_energy`` is F, without PV; ``neighbors`` valid for
        the new cell). Host side; not differentiable implicitly.

    Raises:
        RelaxationError: ``throw`` and not converged. ValueError: pinned atoms, bad pressure.
    """
    tolerance = _host_arguments("relax_cell", vg, state, neighbors, tolerance)
    if bool(np.any(np.asarray(vg.pinned))):
        raise ValueError("relax_cell does not take pinned atoms (they would have to follow the strain)")
    if not any(vg.cell.pbc):
        raise ValueError(f"relax_cell needs a periodic direction; pbc is {vg.cell.pbc}")
    if not np.isfinite(pressure):
        raise ValueError(f"pressure must be finite (eV/Å³); got {pressure!r}")
    dtype = state.positions.dtype
    iterations = 0
    for _ in range(MAX_REBUILDS + 1):
        neighbors = vg.covering_neighbors(state, neighbors)
        vectors, state, free_energy, steps, norm = _relax_cell(vg, state, neighbors, jnp.asarray(pressure, dtype),
                                                               jnp.asarray(tolerance, dtype), max_steps, memory)
        iterations += int(steps)
        vg = eqx.tree_at(lambda v: v.cell.vectors, vg, vectors)
        if not bool(jnp.isfinite(free_energy)) or int(steps) == 0:
            break  # no step: state and cell are the ones the (covering) list was taken at
        # The list was built in the unstrained cell: rebuild it in the new one and go on from there.
        neighbors = vg.neighbor_list(state.positions, state.stiffness, skin=neighbors.skin,
                                     decomposition=neighbors.decomposition)
    return vg, _host_result("(X, k) and the cell", vg, state, free_energy, iterations, norm, neighbors, tolerance,
                            throw)


@eqx.filter_jit
def _relax_cell(vg, state, neighbors, pressure, tolerance, max_steps, memory):
    dtype = state.positions.dtype
    d = vg.cell.dim
    periodic = jnp.asarray(vg.cell.pbc)
    allowed = (periodic[:, None] & periodic[None, :]).astype(dtype)
    vectors = vg.cell.vectors.astype(dtype)

    def unpack(y):
        positions, log_stiffness, strain = y
        strain = 0.5 * (strain + strain.T) * allowed
        deformation = jnp.eye(d, dtype=dtype) + strain
        strained = eqx.tree_at(lambda v: v.cell.vectors, vg, vectors @ deformation.T)
        return strained, DMDState(positions @ deformation.T, jnp.exp(log_stiffness), state.order_parameter)

    def objective(y):
        strained, current = unpack(y)
        volume = jnp.abs(jnp.linalg.det(jnp.where(periodic[:, None], strained.cell.vectors, jnp.eye(d, dtype=dtype))))
        return strained(current, neighbors) + pressure * volume

    def gradient_norm(gradient):
        return _max_abs((gradient[0], gradient[1], gradient[2] * allowed))

    y0 = (state.positions, jnp.log(state.stiffness.astype(dtype)), jnp.zeros((d, d), dtype))
    y, iterations, norm = _lbfgs(objective, y0, gradient_norm, tolerance, max_steps, memory)
    strained, relaxed = unpack(y)
    return strained.cell.vectors, relaxed, strained(relaxed, neighbors), iterations, norm
