r"""Gradient-based fitting of model parameters: a thin loop over an optax optimiser (DESIGN.md §8).

``fit(loss, parameters)`` minimises a scalar ``loss(parameters)`` — e.g. the misfit of a
:func:`dmdjax.dmd.solve` trajectory to data, differentiable through diffrax and the
implicit (X, k) relaxation — and records the loss history. It is not a framework: the loss,
the parameter pytree and the optimiser are the user's.

The default optimiser is optax's L-BFGS, run as a compiled update. Its line search lies inside
that update and traces the loss three more times, so a loss that is a whole DMD run compiles
four times over; ``optimizer="L-BFGS-B"`` instead drives scipy's L-BFGS-B on the host with the
loss and its gradient compiled once.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize
from jax.flatten_util import ravel_pytree

from .progress import Progress

logger = logging.getLogger(__name__)


class FitResult(eqx.Module):
    """Outcome of :func:`fit`.

    Attributes:
        parameters: the best parameters seen (lowest loss).
        loss: the loss there. history: ``(steps + 1,)`` loss before every step and after the last.
        steps: optimiser steps taken. converged: True if a stopping rule (not ``max_steps``) ended it.
    """

    parameters: Any
    loss: float
    history: np.ndarray
    steps: int
    converged: bool


def fit(
    loss: Callable[[Any], jax.Array],
    parameters: Any,
    optimizer: optax.GradientTransformation | str | None = None,
    *,
    max_steps: int = 200,
    gradient_tolerance: float = 0.0,
    loss_tolerance: float = 0.0,
    gradient: str = "reverse",
    progress: bool = False,
) -> FitResult:
    """Minimise ``loss(parameters)`` with ``optimizer`` (default ``optax.lbfgs()``).

    Arguments:
        loss: scalar function of a pytree of parameters (jitted here with
            ``equinox.filter_jit``; non-array leaves are static).
        parameters: the starting point (a pytree; only its inexact-array leaves are fitted).
        optimizer: any optax transformation (default ``optax.lbfgs()``), run as a compiled
            update; L-BFGS-type ones receive the value, the gradient and ``value_fn`` (optax's
            line-search protocol). Or ``"L-BFGS-B"``: :func:`scipy.optimize.minimize` on the
            host, the parameters flattened to one float64 vector and cast back to their dtypes
            for every evaluation, the loss compiled once; a step is one of its iterations (a
            line search of one or more evaluations). Its first trial step has unit length in
            parameter space, so parameters should be scaled so that O(1) changes are
            meaningful. Its relative-reduction rule is off (``ftol=0``): besides the rules here
            it stops only where its line search makes no progress; ``converged`` reports the
            rules here.
        max_steps: the step limit.
        gradient_tolerance: stop when max |∂loss/∂θ| ≤ this.
        loss_tolerance: stop when the loss itself is ≤ this.
        gradient: how ∂loss/∂θ is computed. ``"reverse"`` (default): reverse mode, one
            backward pass whatever the number of parameters. ``"forward"``: ``jax.jacfwd``, one
            tangent per fitted scalar carried alongside the loss in a single pass
            (:func:`forward_gradient`); cheaper to compile and to run when the parameters are
            few (a handful) and the loss is long, e.g. a :func:`dmdjax.dmd.solve` trajectory,
            which then needs ``adjoint=diffrax.ForwardMode()``.
        progress: a progress bar showing the loss.

    Raises:
        ValueError: ``max_steps`` < 1, an unknown ``optimizer`` name or ``gradient``, or a
            non-finite loss at the start.
        FloatingPointError: the loss became non-finite (the best parameters so far are in
            ``error.result``).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1; got {max_steps!r}")
    if gradient not in ("reverse", "forward"):
        raise ValueError(f"gradient must be 'reverse' or 'forward'; got {gradient!r}")
    if isinstance(optimizer, str) and optimizer != "L-BFGS-B":
        raise ValueError(f"optimizer must be an optax transformation or 'L-BFGS-B'; got {optimizer!r}")
    optimizer = optax.lbfgs() if optimizer is None else optimizer
    fitted, static = eqx.partition(parameters, eqx.is_inexact_array)
    objective = lambda p: loss(eqx.combine(p, static))
    if gradient == "forward":
        objective = forward_gradient(objective)
    value_and_grad = eqx.filter_jit(jax.value_and_grad(objective))
    # Weak-typed leaves (Python scalars, jnp.asarray(0.9)) come back strong from the first
    # update: make them strong now, or the update compiles again on steps 2 and 3.
    fitted = _strong(fitted)
    value, gradient = value_and_grad(fitted)
    if not np.isfinite(float(value)):
        raise ValueError(f"the loss is not finite at the starting parameters: {float(value)!r}")
    if isinstance(optimizer, str):
        return _fit_scipy(value_and_grad, fitted, static, value, gradient, max_steps=max_steps,
                          gradient_tolerance=gradient_tolerance, loss_tolerance=loss_tolerance, progress=progress)

    @eqx.filter_jit
    def update(p, state, value, gradient):
        updates, state = optimizer.update(gradient, state, p, value=value, grad=gradient, value_fn=objective)
        return optax.apply_updates(p, updates), state

    state = _strong(optimizer.init(fitted))
    history, best, best_loss, converged = [float(value)], fitted, float(value), False
    bar = Progress(max_steps, "fit", "step", enabled=progress)
    taken = 0
    while True:
        if _stops(history[-1], gradient, gradient_tolerance, loss_tolerance):
            converged = True
            break
        if taken == max_steps:
            break
        fitted, state = update(fitted, state, value, gradient)
        value, gradient = _stored_value_and_grad(state, fitted, value_and_grad)
        taken += 1
        history.append(float(value))
        if not np.isfinite(history[-1]):
            bar.close()
            raise _diverged(taken, FitResult(eqx.combine(best, static), best_loss, np.asarray(history), taken, False))
        if history[-1] < best_loss:
            best, best_loss = fitted, history[-1]
        bar.update(1, loss=history[-1])
    bar.close()
    return FitResult(eqx.combine(best, static), best_loss, np.asarray(history), taken, converged)


def _stops(value, gradient, gradient_tolerance, loss_tolerance) -> bool:
    """:func:`fit`'s stopping rules: max |∂loss/∂θ| ≤ ``gradient_tolerance`` or loss ≤ ``loss_tolerance``."""
    largest = max((float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(gradient)), default=0.0)
    return largest <= gradient_tolerance or float(value) <= loss_tolerance


def _diverged(step: int, result: FitResult) -> FloatingPointError:
    """The error of a loss that became non-finite in ``step``; the best result so far rides on it."""
    error = FloatingPointError(f"the loss became non-finite at step {step}; the best loss was {result.loss:g}")
    error.result = result
    return error


def _fit_scipy(value_and_grad, fitted, static, value, gradient, *, max_steps, gradient_tolerance, loss_tolerance,
               progress):
    """:func:`fit` by scipy's L-BFGS-B: the host loop, the compiled ``value_and_grad``; ``value``
    and ``gradient`` are the loss's at ``fitted``, the start."""
    start, unravel = ravel_pytree(fitted)
    dtype = start.dtype
    # The latest evaluation: scipy asks for the point it accepted again in the callback.
    last = dict(x=np.asarray(start, np.float64), value=float(value),
                gradient=np.asarray(ravel_pytree(gradient)[0], np.float64))

    def evaluate(x):
        if not np.array_equal(last["x"], x):
            value, gradient = value_and_grad(unravel(jnp.asarray(x, dtype)))
            last.update(x=np.array(x), value=float(value), gradient=np.asarray(ravel_pytree(gradient)[0], np.float64))
        return last["value"], last["gradient"]

    def result(converged):
        parameters = eqx.combine(unravel(jnp.asarray(best["x"], dtype)), static)
        return FitResult(parameters, best["value"], np.asarray(history), len(history) - 1, converged)

    def met(point):
        return _stops(point["value"], point["gradient"], gradient_tolerance, loss_tolerance)

    best, history = dict(last), [last["value"]]
    bar = Progress(max_steps, "fit", "step", enabled=progress)

    def function(x):
        value, gradient = evaluate(x)
        if not np.isfinite(value):  # a trial point of the line search: L-BFGS-B does not recover from it
            bar.close()
            raise _diverged(len(history), result(False))
        return value, gradient

    def callback(intermediate_result):  # after each iteration, at the point it accepted
        evaluate(intermediate_result.x)
        history.append(last["value"])
        if last["value"] < best["value"]:
            best.update(last)
        bar.update(1, loss=history[-1])
        if met(last):
            raise StopIteration

    if not met(best):
        outcome = scipy.optimize.minimize(function, best["x"], jac=True, method="L-BFGS-B", callback=callback,
                                          options={"maxiter": max_steps, "gtol": gradient_tolerance, "ftol": 0.0})
        logger.info("L-BFGS-B stopped after %d steps, %d evaluations: %s", outcome.nit, outcome.nfev, outcome.message)
    bar.close()
    return result(met(best))


def forward_gradient(function: Callable[[Any], jax.Array]) -> Callable[[Any], jax.Array]:
    """``function`` (a scalar of a pytree of arrays) whose reverse-mode derivative is computed in
    forward mode: ``jax.value_and_grad`` of the result runs one ``jax.jacfwd`` pass, the value
    and a tangent for every scalar parameter together (a ``jax.custom_vjp``). Worth it when the
    parameters are few and ``function`` is a long computation whose reverse pass is costly (a
    checkpointed ODE solve); every transformation inside ``function`` must support forward mode.
    The result itself supports reverse mode only (``jax.jvp`` of it raises, as for any
    ``custom_vjp``).
    """

    @jax.custom_vjp
    def wrapped(parameters):
        return function(parameters)

    def value_and_gradient(parameters):
        value = function(parameters)
        return value, value  # (differentiated output, auxiliary value)

    def forward(parameters):
        gradient, value = jax.jacfwd(value_and_gradient, has_aux=True)(parameters)
        return value, gradient

    def backward(gradient, cotangent):
        return (jax.tree.map(lambda g: cotangent * g, gradient),)

    wrapped.defvjp(forward, backward)
    return wrapped


def _strong(tree):
    """The pytree with every weak-typed array leaf made strongly typed (same dtype)."""
    return jax.tree.map(lambda x: x.astype(x.dtype) if getattr(x, "weak_type", False) else x, tree)


def _stored_value_and_grad(state, parameters, value_and_grad):
    """The loss and gradient at ``parameters``: the ones a line search stored in the optimiser
    state at the point it accepted (optax's zoom line search of L-BFGS does), else computed."""
    value = optax.tree_utils.tree_get(state, "value")
    gradient = optax.tree_utils.tree_get(state, "grad")
    if value is None or gradient is None or not np.isfinite(float(value)):
        return value_and_grad(parameters)
    return value, gradient
