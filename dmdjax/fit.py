r"""Gradient-based fitting of model parameters: a thin loop over an optax optimiser (DESIGN.md §8).

``fit(loss, parameters)`` minimises a scalar ``loss(parameters)`` — e.g. the misfit of a
:func:`dmdjax.dmd.solve` trajectory to data, differentiable through diffrax and the
implicit (X, k) relaxation — and records the loss history. It is not a framework: the loss,
the parameter pytree and the optimiser are the user's.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .progress import Progress


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
    optimizer: optax.GradientTransformation | None = None,
    *,
    max_steps: int = 200,
    gradient_tolerance: float = 0.0,
    loss_tolerance: float = 0.0,
    progress: bool = False,
) -> FitResult:
    """Minimise ``loss(parameters)`` with ``optimizer`` (default ``optax.lbfgs()``).

    Arguments:
        loss: scalar function of a pytree of parameters (jitted here with
            ``equinox.filter_jit``; non-array leaves are static).
        parameters: the starting point (a pytree; only its inexact-array leaves are fitted).
        optimizer: any optax transformation; L-BFGS-type ones receive the value, the
            gradient and ``value_fn`` (optax's line-search protocol).
        max_steps: the step limit.
        gradient_tolerance: stop when max |∂loss/∂θ| ≤ this.
        loss_tolerance: stop when the loss itself is ≤ this.
        progress: a progress bar showing the loss.

    Raises:
        ValueError: ``max_steps`` < 1, or a non-finite loss at the start.
        FloatingPointError: the loss became non-finite (the best parameters so far are in
            ``error.result``).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1; got {max_steps!r}")
    optimizer = optax.lbfgs() if optimizer is None else optimizer
    fitted, static = eqx.partition(parameters, eqx.is_inexact_array)
    objective = lambda p: loss(eqx.combine(p, static))
    value_and_grad = eqx.filter_jit(jax.value_and_grad(objective))

    @eqx.filter_jit
    def update(p, state, value, gradient):
        updates, state = optimizer.update(gradient, state, p, value=value, grad=gradient, value_fn=objective)
        return optax.apply_updates(p, updates), state

    # Weak-typed leaves (Python scalars, jnp.asarray(0.9)) come back strong from the first
    # update: make them strong now, or the update compiles again on steps 2 and 3.
    fitted = _strong(fitted)
    state = _strong(optimizer.init(fitted))
    value, gradient = value_and_grad(fitted)
    if not np.isfinite(float(value)):
        raise ValueError(f"the loss is not finite at the starting parameters: {float(value)!r}")
    history, best, best_loss, converged = [float(value)], fitted, float(value), False
    bar = Progress(max_steps, "fit", "step", enabled=progress)
    taken = 0
    while True:
        if max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree_util.tree_leaves(gradient)) <= gradient_tolerance or history[-1] <= loss_tolerance:
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
            error = FloatingPointError(f"the loss became non-finite at step {taken}; the best loss was {best_loss:g}")
            error.result = FitResult(eqx.combine(best, static), best_loss, np.asarray(history), taken, False)
            raise error
        if history[-1] < best_loss:
            best, best_loss = fitted, history[-1]
        bar.update(1, loss=history[-1])
    bar.close()
    return FitResult(eqx.combine(best, static), best_loss, np.asarray(history), taken, converged)


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
