"""dmdjax.fit: recover known parameters of a DMD run from its own (noisy) trajectory."""

import diffrax
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dmdjax as dj
from dmdjax import dmd, kinetics
from dmdjax.fit import fit


def test_fit_recovers_pair_and_kinetic_parameters_from_a_noisy_trajectory():
    """K1 on a 6-site LJ chain: data from (ε_AB, k_c) = (0.9 eV, 12.5 /eV·τ) plus Gaussian noise
    (σ = 10⁻³); from (0.95, 9.0) L-BFGS returns both within 1 % in ≤ 200 steps."""
    lj = dj.LennardJones([[1.0, 0.9], [0.9, 0.9]], [[1.0, 1.05], [1.05, 1.1]], species=("A", "B"), cutoff=2.6)
    chain = dj.systems.chain(6, 1.05, pinned=[0])
    nbrs = dj.neighbor_list(chain.positions, chain.cell, lj.cutoff, skin=0.4)
    vg = dj.VGFreeEnergy(lj, chain.cell, 0.2 / dj.BOLTZMANN_EV_PER_K, 6, pinned=chain.pinned,
                         pinned_species=chain.pinned)
    s0 = (jnp.linspace(0.5, -0.5, 6) + 0.1).at[0].set(1.0)
    start = dj.relax(vg, chain.positions, s0, nbrs, tolerance=1e-12)
    graph = kinetics.bond_graph(chain.positions, vg.cell, nbrs, 1.4, pinned_species=vg.pinned_species)
    times = jnp.linspace(0.0, 0.5, 6)
    swap = jnp.array([[0.0, 1.0], [1.0, 0.0]])

    def trajectory(theta):
        epsilon_ab, mobility = theta
        model = eqx.tree_at(lambda v: v.potential.epsilon, vg,
                            vg.potential.epsilon + (epsilon_ab - vg.potential.epsilon[0, 1]) * swap)
        return dmd.solve(model, dmd.GradientFlow(mobility), graph, nbrs, start.positions, start.stiffness, s0, times,
                         stepsize_controller=diffrax.ConstantStepSize(), dt0=0.05, tolerance=1e-10).order_parameter

    truth = jnp.array([0.9, 12.5])
    data = trajectory(truth) + 1e-3 * jnp.asarray(np.random.default_rng(0).normal(size=(6, 6)))
    result = fit(lambda theta: jnp.mean((trajectory(theta) - data) ** 2), jnp.array([0.95, 9.0]), max_steps=200,
                 gradient_tolerance=1e-12)
    print("fit:", np.asarray(result.parameters), "steps", result.steps, "loss", result.loss)
    assert result.steps <= 200 and result.loss < result.history[0]
    np.testing.assert_allclose(np.asarray(result.parameters), np.asarray(truth), rtol=0.01)


def test_fit_stops_and_reports():
    """A quadratic: the default L-BFGS reaches the minimum and stops on the gradient rule;
    Adam runs to max_steps; a bad start is named."""
    target = jnp.array([1.0, -2.0, 3.0])
    loss = lambda p: jnp.sum((p["x"] - target) ** 2)
    result = fit(loss, {"x": jnp.zeros(3)}, gradient_tolerance=1e-10)
    assert result.converged and result.steps < 20
    np.testing.assert_allclose(np.asarray(result.parameters["x"]), np.asarray(target), atol=1e-8)
    assert result.history.shape == (result.steps + 1,) and result.history[-1] == pytest.approx(result.loss)
    adam = fit(loss, {"x": jnp.zeros(3)}, optax.adam(0.1), max_steps=7)
    assert adam.steps == 7 and not adam.converged and adam.loss < adam.history[0]
    with pytest.raises(ValueError, match="not finite"):
        fit(lambda p: jnp.log(p - 1.0).sum(), jnp.zeros(2))
    with pytest.raises(ValueError, match="max_steps"):
        fit(loss, {"x": jnp.zeros(3)}, max_steps=0)
