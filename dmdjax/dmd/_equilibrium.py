r"""DMD's long-time state: the composition-constrained minimum of F(X, k, s)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..free_energy import VGFreeEnergy
from ..progress import logger
from ..neighbors import NeighborList
from ..relax import RELAX_METHODS, dense_hessian, hessian_colouring, relax
from ..state import DMDState, HoldsState
from ._solve import DMDError


class Equilibrium(HoldsState):
    """The composition-constrained minimum of F (see :func:`equilibrium`).

    Attributes:
        state: the minimising :class:`~dmdjax.DMDState` (X*, k*, s*);
        free_energy: F*, eV; chemical_potential: the common μ of the free sites, eV;
        residual: max |μ_i − μ| over free sites, eV; iterations: Newton steps.

    ``order_parameter``, ``positions`` and ``stiffness`` are shortcuts for the fields of ``state``.
    """

    state: DMDState
    free_energy: Float[Array, ""]
    chemical_potential: Float[Array, ""]
    residual: float
    iterations: int





@eqx.filter_jit
def _potential_jacobian(vg, state, neighbors, colouring):
    """μ = ∂F/∂s at a relaxed (X*, k*) and its total derivative through X*(s), k*(s):
    dμ/ds = F_ss − F_sz H_zz⁻¹ F_zs (implicit function theorem at ∇_z F = 0, z = (X, log k) of
    the unpinned atoms), with the dense H_zz from compressed Hessian-vector products."""
    positions, stiffness, order_parameter = state.positions, state.stiffness, state.order_parameter
    n, d = positions.shape
    log_stiffness = jnp.log(jnp.where(vg.pinned_stiffness, 1.0, stiffness))
    z = jnp.concatenate([positions, log_stiffness.reshape(n, -1)], axis=1)  # k: (N,) or (N, 2)
    at = lambda z, s: DMDState(z[:, :d], jnp.exp(z[:, d:].reshape(stiffness.shape)), s)
    mu = lambda z, s: vg.chemical_potential(at(z, s), neighbors)
    gradient = jax.grad(lambda z, s: vg(at(z, s), neighbors))
    free = jnp.broadcast_to(~vg.pinned[:, None], z.shape).reshape(-1)
    h_zz = dense_hessian(lambda z: gradient(z, order_parameter), z, colouring)
    h_zz = jnp.where(free[:, None] & free[None, :], h_zz, 0.0) + jnp.diag(~free)
    f_zs = jax.jacfwd(lambda s: gradient(z, s).reshape(-1))(order_parameter)
    f_zs = jnp.where(free[:, None], f_zs, 0.0)
    f_ss = jax.jacfwd(lambda s: mu(z, s))(order_parameter)
    return mu(z, order_parameter), f_ss - f_zs.T @ jnp.linalg.solve(h_zz, f_zs)


def default_equilibrium_tolerance(dtype) -> float:
    """The default tolerance of :func:`equilibrium` on max |μ_i − λ|, eV: 1e-10 in float64, 1e-4 in
    float32. Float32's floor is that of the inner relaxation (max |∇F| ≤ 1e-3 there): once s
    settles the relaxation no longer moves (X, k), and μ_i − λ stalls at ~5e-5 eV (a 3 200-site
    Al–Mg slab at 1 % Mg); 1e-4 eV is β|Δμ| = 2e-3 of the concentrations at 600 K."""
    return 1e-10 if jnp.dtype(dtype) == jnp.float64 else 1e-4


#: The relaxations inside :func:`equilibrium` in float32 (max |∇F|; relax's own default there is
#: 1e-3): with 1e-3 a warm start does not move (X, k) once s changes little, and the
#: self-consistent iteration on a 3 200-site Al–Mg slab at 1 % Mg stalled at |μ_i − λ| = 1.8e-3 eV;
#: with 1e-4 it reached 7.6e-5 eV in 5 steps.
FLOAT32_RELAX_TOLERANCE = 1e-4


def equilibrium(
    vg: VGFreeEnergy,
    state: DMDState,
    neighbors: NeighborList,
    *,
    tolerance: float | None = None,
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
    from the state's s: where F is not convex in s (segregating alloys below the
    mean-field critical temperature) the uniform state is a saddle, and a start near the
    wanted minimum (e.g. a long DMD run's last state) picks it. The state's (X, k) are the
    first warm start; ``relax_method`` as in :func:`~dmdjax.dmd.solve`. Steps are damped to keep s inside (−1, 1); where the
    Newton step is not a descent direction (F not convex there) a scaled projected
    gradient step is taken instead. Pinned-species sites keep their s. Dense N×N Jacobians: meant for
    N ≲ 10³. One conserved total: the free sites should form one connected bond graph.

    ``method="self-consistent"`` replaces Newton's method by the mean-field self-consistent
    iteration s_i ← tanh(β(λ − μ_i^ex(s))) (μ_i = μ_i^ex + β⁻¹ artanh s_i = λ solved for s at
    fixed μ^ex; λ set by Σ s_i), linearly mixed (mixing halved whenever the residual grows):
    one relaxation and one μ^ex per step, no Jacobian, so any N — for systems where F is
    convex in s and the solute feedback is weak (dilute alloys); it converges linearly.

    ``tolerance`` (eV, on max |μ_i − λ|) defaults to :func:`default_equilibrium_tolerance` of
    the state's dtype: 1e-10 in float64, 1e-4 in float32, where the relaxation's tolerance (max
    |∇F| ≤ 1e-3) leaves μ_i − λ at up to ~5e-5 eV (:func:`default_equilibrium_tolerance`).
    ``relax_tolerance`` (max |∇F| of each (X, k) relaxation) defaults to :func:`~dmdjax.relax`'s
    in float64 and to ``FLOAT32_RELAX_TOLERANCE`` = 1e-4 in float32.

    Raises:
        DMDError: if the iteration has not reached ``tolerance`` after ``max_steps`` steps.
    """
    if start not in ("uniform", "given"):
        raise ValueError(f"start must be 'uniform' or 'given'; got {start!r}")
    if method not in ("newton", "self-consistent"):
        raise ValueError(f"method must be 'newton' or 'self-consistent'; got {method!r}")
    vg.check(state, neighbors)
    positions = state.positions
    if tolerance is None:
        tolerance = default_equilibrium_tolerance(positions.dtype)
    if relax_tolerance is None and jnp.dtype(positions.dtype) != jnp.float64:
        relax_tolerance = FLOAT32_RELAX_TOLERANCE
    free = ~np.asarray(vg.pinned_species)
    n_free = int(free.sum())
    s = np.asarray(state.order_parameter, dtype=float).copy()
    if start == "uniform":
        s[free] = s[free].sum() / n_free
    dtype = positions.dtype
    colouring = _colouring(vg, neighbors, relax_method)
    if method == "self-consistent":
        return _self_consistent(vg, state, s, neighbors, free, tolerance, max_steps, relax_tolerance, relax_method,
                                colouring)
    jacobian_colouring = colouring if colouring is not None else hessian_colouring(vg, neighbors)
    x, k = positions, state.stiffness
    for iteration in range(max_steps + 1):
        relaxed = relax(vg, DMDState(x, k, jnp.asarray(s, dtype)), neighbors, method=relax_method,
                        tolerance=relax_tolerance, colouring=colouring)
        x, k = relaxed.positions, relaxed.stiffness
        if relaxed.neighbors is not neighbors:  # relax rebuilt the list: a new sparsity pattern
            neighbors = relaxed.neighbors
            colouring = _colouring(vg, neighbors, relax_method)
            jacobian_colouring = colouring if colouring is not None else hessian_colouring(vg, neighbors)
        mu, hessian = _potential_jacobian(vg, relaxed.state, neighbors, jacobian_colouring)
        mu, hessian = np.asarray(mu)[free], np.asarray(hessian)[np.ix_(free, free)]
        lagrange = mu.mean()
        residual = float(np.max(np.abs(mu - lagrange)))
        if residual <= tolerance:
            return Equilibrium(relaxed.state, relaxed.free_energy, jnp.asarray(lagrange, dtype), residual,
                               iteration)
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


def _self_consistent(vg, start, s, neighbors, free, tolerance, max_steps, relax_tolerance, method, colouring):
    """``equilibrium(method="self-consistent")``: mixed fixed-point iteration on s = tanh(β(λ − μ^ex))."""
    from scipy.optimize import brentq

    dtype = start.dtype
    beta = float(vg.beta)
    total = s[free].sum()
    x, k, mixing, previous = start.positions, start.stiffness, 1.0, np.inf
    for iteration in range(max_steps + 1):
        relaxed = relax(vg, DMDState(x, k, jnp.asarray(s, dtype)), neighbors, method=method,
                        tolerance=relax_tolerance, colouring=colouring)
        x, k = relaxed.positions, relaxed.stiffness
        if relaxed.neighbors is not neighbors:  # relax rebuilt the list
            neighbors = relaxed.neighbors
            colouring = _colouring(vg, neighbors, method)
        excess = np.asarray(vg.excess_chemical_potential(relaxed.state, neighbors), dtype=float)[free]
        mu = excess + np.arctanh(s[free]) / beta  # μ = μ^ex + β⁻¹ artanh s (VGFreeEnergy.chemical_potential)
        lagrange = mu.mean()
        residual = float(np.max(np.abs(mu - lagrange)))
        logger.debug(f"equilibrium (self-consistent) step {iteration}: max |μ_i − λ| = {residual:.3g} eV, "
                     f"mixing {mixing:.3g}, relaxation {int(relaxed.iterations)} iterations")
        if residual <= tolerance:
            return Equilibrium(relaxed.state, relaxed.free_energy, jnp.asarray(lagrange, dtype), residual, iteration)
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
    if relax_method not in RELAX_METHODS:
        raise ValueError(f"relax_method must be one of {RELAX_METHODS}; got {relax_method!r}")
    return hessian_colouring(vg, neighbors) if relax_method == "newton" else None


