"""dmdjax.fit: stopping rules and reports; the parameter-recovery demo (a notebook)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dmdjax.fit import fit, forward_gradient


@pytest.mark.slow  # a notebook run
def test_fitting_demo_recovers_pair_and_kinetic_parameters(execute_notebook):
    """Fitting demo 1 (issue 9), ``notebooks/fit_parameters.ipynb``: (ε_AB, σ_AB, k_c) of a K1 run on a
    10-site chain recovered by L-BFGS from a noisy trajectory through dmd.solve; the notebook asserts
    every parameter within 1 % in ≤ 200 steps (seen: 1.5e-5, 7.6e-5, 2.1e-3 in 28 steps)."""
    text = execute_notebook("fit_parameters.ipynb")
    assert "L-BFGS steps, converged: True" in text


def test_fit_stops_and_reports():
    """A quartic: the default (optax's L-BFGS) and scipy's L-BFGS-B (on the host) reach the minimum
    and stop on the gradient rule, also with the gradient by forward mode; Adam runs to max_steps;
    a bad start, a bad name and a loss that turns non-finite are named."""
    target = jnp.array([1.0, -2.0, 3.0])
    loss = lambda p: jnp.sum((p["x"] - target) ** 2) + 0.1 * jnp.sum(p["x"] ** 4)
    minimum = np.asarray(fit(loss, {"x": target}, optax.lbfgs(), gradient_tolerance=1e-12).parameters["x"])
    for optimizer in (None, "L-BFGS-B"):
        result = fit(loss, {"x": jnp.zeros(3)}, optimizer, gradient_tolerance=1e-9)
        assert result.converged and 0 < result.steps < 30
        np.testing.assert_allclose(np.asarray(result.parameters["x"]), minimum, atol=1e-8)
        assert result.history.shape == (result.steps + 1,) and result.history[-1] == pytest.approx(result.loss)
        assert np.all(np.diff(result.history) <= 0)  # no accepted step ascends
        forward = fit(loss, {"x": jnp.zeros(3)}, optimizer, gradient_tolerance=1e-9, gradient="forward")
        assert forward.converged and forward.steps == result.steps
        np.testing.assert_allclose(np.asarray(forward.parameters["x"]), minimum, atol=1e-8)
    for optimizer in (None, "L-BFGS-B"):
        stopped = fit(loss, {"x": jnp.zeros(3)}, optimizer, loss_tolerance=5.0)  # the minimum is 3.3
        assert stopped.converged and stopped.loss <= 5.0 < stopped.history[-2]  # stopped by the loss rule
    float32 = fit(loss, {"x": jnp.zeros(3, jnp.float32)}, "L-BFGS-B", gradient_tolerance=1e-3)
    assert float32.converged and float32.parameters["x"].dtype == jnp.float32
    adam = fit(loss, {"x": jnp.zeros(3)}, optax.adam(0.1), max_steps=7)
    assert adam.steps == 7 and not adam.converged and adam.loss < adam.history[0]
    with pytest.raises(ValueError, match="not finite"):
        fit(lambda p: jnp.log(p - 1.0).sum(), jnp.zeros(2))
    with pytest.raises(ValueError, match="max_steps"):
        fit(loss, {"x": jnp.zeros(3)}, max_steps=0)
    with pytest.raises(ValueError, match="'backward'"):
        fit(loss, {"x": jnp.zeros(3)}, gradient="backward")
    with pytest.raises(ValueError, match="'BFGS'"):
        fit(loss, {"x": jnp.zeros(3)}, "BFGS")
    cliff = lambda x: jnp.where(x < 2.0, (x - 5.0) ** 2, jnp.nan).sum()  # not finite beyond x = 2
    with pytest.raises(FloatingPointError, match="non-finite") as error:
        fit(cliff, jnp.zeros(1), "L-BFGS-B")
    assert error.value.result.loss < 25.0 and float(error.value.result.parameters[0]) < 2.0


def test_fit_compiles_its_loss_once():
    """scipy's L-BFGS-B traces the loss once whatever the number of steps; with optax's L-BFGS,
    weak-typed starting values (jnp.asarray(0.5)) must not make the update compile again on later
    steps: a fit of 8 steps traces the loss as often as a fit of 2."""
    traces = []

    def loss(p):
        traces.append(1)  # runs at trace time only
        return (p["a"] - 2.0) ** 4 + (p["b"] + 1.0) ** 2

    def count(steps, optimizer):
        traces.clear()
        result = fit(loss, {"a": jnp.asarray(0.5), "b": jnp.asarray(0.0)}, optimizer, max_steps=steps)
        assert result.steps == steps
        return len(traces)

    assert count(8, "L-BFGS-B") == count(2, "L-BFGS-B") == 1
    assert count(8, None) == count(2, None)


def test_forward_gradient_equals_reverse_and_passes_while_loops():
    """forward_gradient: value and gradient equal jax.value_and_grad's (a pytree of a vector and a
    scalar); through a lax.while_loop, where reverse mode fails, the gradient is the closed form."""
    def loss(p):
        return jnp.sum(jnp.sin(p["x"]) * p["a"] ** 2) + jnp.prod(p["x"])

    point = {"x": jnp.array([0.3, -1.2, 2.0]), "a": jnp.asarray(1.7)}
    value, gradient = jax.value_and_grad(forward_gradient(loss))(point)
    expected_value, expected = jax.value_and_grad(loss)(point)
    assert float(value) == pytest.approx(float(expected_value), rel=1e-14)
    for name in point:
        np.testing.assert_allclose(np.asarray(gradient[name]), np.asarray(expected[name]), rtol=1e-13)

    def square_root(c):  # Newton's iteration for sqrt(c) in a while loop
        step = lambda state: (state[0] + 1, 0.5 * (state[1] + c / state[1]))
        return jax.lax.while_loop(lambda state: state[0] < 30, step, (0, c))[1]

    with pytest.raises(ValueError, match="while_loop"):
        jax.grad(square_root)(2.0)
    assert float(jax.grad(forward_gradient(square_root))(2.0)) == pytest.approx(0.5 / np.sqrt(2.0), rel=1e-13)
