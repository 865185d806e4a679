"""The DMD driver (work in progress for the kinetics issue): conservation, F decrease, errors, resume."""

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import dmdjax as dj
from dmdjax import dmd

LJ = dj.LennardJones([[1.0, 0.5], [0.5, 0.9]], [[1.0, 1.1], [1.1, 1.2]], species=("A", "B"), cutoff=2.6)


@pytest.fixture(scope="module")
def setup():
    n = 10
    chain = dj.systems.chain(n, 1.1, pinned=[0])
    nbrs = dj.neighbor_list(chain.positions, chain.cell, LJ.cutoff, skin=0.4)
    vg = dj.VGFreeEnergy(LJ, chain.cell, 0.05 / dj.BOLTZMANN_EV_PER_K, n, pinned=chain.pinned)
    return chain, nbrs, vg, jnp.linspace(0.6, -0.6, n)


@pytest.mark.parametrize("law", [dmd.GradientFlow(0.1), dmd.SpinDiffusion(10.0, "exact"),
                                 dmd.SpinDiffusion(10.0, "gradient")], ids=["K1", "K2-exact", "K2-gradient"])
def test_conservation_and_free_energy_decrease(setup, law):
    chain, nbrs, vg, s0 = setup
    trajectory = dmd.run(vg, chain.positions, s0, nbrs, law, np.linspace(0, 4, 5), kinetic_cutoff=1.5,
                         tolerance=1e-10)
    totals = np.asarray(jnp.sum(trajectory.order_parameter, axis=1))
    assert np.max(np.abs(totals - totals[0])) < 1e-12 * np.abs(s0).sum()
    assert np.all(np.diff(np.asarray(trajectory.free_energy)) < 0)
    assert np.all(np.abs(np.asarray(trajectory.order_parameter)) < 1)
    assert trajectory.parameters["law"] == type(law).__name__


def test_failed_step_reports_time_and_keeps_the_last_good_state(setup):
    chain, nbrs, vg, s0 = setup
    # Master-equation rates e^{βΔ} ~ 1e4 make the ODE stiff: an explicit solver with few steps fails.
    with pytest.raises(dmd.DMDError, match=r"DMD stopped in \(0, 1\]: .* last good state is at t = 0") as info:
        dmd.run(vg, chain.positions, s0, nbrs, dmd.MasterEquation(100.0, 0.0), [0.0, 1.0, 2.0],
                kinetic_cutoff=1.5, solver=diffrax.Tsit5(), max_steps=64)
    assert info.value.trajectory.time.shape == (1,)
    np.testing.assert_allclose(np.asarray(info.value.trajectory.order_parameter[0]), np.asarray(s0))


def test_resume_from_a_recorded_state_is_exact(setup):
    chain, nbrs, vg, s0 = setup
    law = dmd.SpinDiffusion(10.0, "exact")
    times = np.linspace(0, 3, 4)
    full = dmd.run(vg, chain.positions, s0, nbrs, law, times, kinetic_cutoff=1.5, tolerance=1e-10)
    resumed = dmd.run(vg, full.positions[1], full.order_parameter[1], nbrs, law, times[1:], kinetic_cutoff=1.5,
                      stiffness=full.stiffness[1], tolerance=1e-10)
    np.testing.assert_array_equal(np.asarray(resumed.order_parameter), np.asarray(full.order_parameter[1:]))
    np.testing.assert_array_equal(np.asarray(resumed.positions), np.asarray(full.positions[1:]))
