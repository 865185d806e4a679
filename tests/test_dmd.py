"""The DMD driver: conservation, Lyapunov decrease, long-time equilibrium, linearisation,
failure reports, checkpoint/resume and the trajectory file (DESIGN.md §4).

All runs share one free energy (a 6-site Lennard-Jones chain with weak A–B chemistry at
k_B T = 0.2 eV, first site pinned in place and species, s = +1) so that each law compiles once.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import diffrax
import jax.numpy as jnp
import numpy as np
import pytest

import dmd_chain
import dmdjax as dj
from dmdjax import dmd, kinetics

TAU = 0.1
KINETIC_CUTOFF = 1.4
TIMES = np.array([0.0, 1.0, 5.0, 20.0, 60.0, 120.0])
KT = dmd_chain.KT
TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def setup():
    return {"vg": dmd_chain.VG, "chain": dmd_chain.CHAIN, "nbrs": dmd_chain.NEIGHBORS, "s0": dmd_chain.S0,
            "state": dmd_chain.STATE}


OPTIONS = dict(rtol=1e-9, atol=1e-11, tolerance=1e-11, max_steps=20000)
LAWS = {
    "K1": (dmd.GradientFlow(1.0 / KT / (2 * TAU)), diffrax.Tsit5()),
    "K2-gradient": (dmd.SpinDiffusion(TAU, "gradient"), diffrax.Tsit5()),
    "K2-exact": (dmd.SpinDiffusion(TAU, "exact"), diffrax.Tsit5()),
    "K3": (dmd.MasterEquation(1.0, 0.0), diffrax.Tsit5()),
}


@pytest.fixture(scope="module")
def trajectories(setup):
    out = {}
    for name, (law, solver) in LAWS.items():
        out[name] = dmd.run(setup["vg"], setup["state"], setup["nbrs"], law, TIMES,
                            kinetic_cutoff=KINETIC_CUTOFF, solver=solver, **OPTIONS)
    return out


@pytest.fixture(scope="module")
def minimiser(setup):
    return dmd.equilibrium(setup["vg"], setup["state"], setup["nbrs"], relax_tolerance=1e-11)


@pytest.mark.parametrize("name", list(LAWS))
def test_conservation_and_bounds(trajectories, setup, name):
    s = np.asarray(trajectories[name].order_parameter)
    totals = s.sum(axis=1)
    assert np.max(np.abs(totals - totals[0])) <= 1e-12 * np.abs(np.asarray(setup["s0"])).sum()
    assert np.all(np.abs(s[:, 1:]) < 1)
    assert s[:, 0].tolist() == [1.0] * len(TIMES)  # the pinned site
    assert trajectories[name].parameters["law"] == type(LAWS[name][0]).__name__


@pytest.mark.parametrize("name", ["K1", "K2-gradient", "K3"])
def test_free_energy_is_non_increasing(trajectories, name):
    free_energy = np.asarray(trajectories[name].free_energy)
    assert np.all(np.diff(free_energy) <= 1e-12 * np.abs(free_energy).max())
    assert free_energy[-1] < free_energy[0] - 1e-3


@pytest.mark.slow
def test_implicit_solver_agrees(trajectories, setup):
    """Kvaerno5 (for stiff cases; its Jacobian goes through the (X, k) relaxation by the
    implicit function theorem, in forward mode) gives the explicit solver's state."""
    law, _ = LAWS["K3"]
    implicit = dmd.run(setup["vg"], setup["state"], setup["nbrs"], law, TIMES[:2],
                       kinetic_cutoff=KINETIC_CUTOFF, solver=diffrax.Kvaerno5(), **OPTIONS)
    np.testing.assert_allclose(np.asarray(implicit.order_parameter[1]),
                               np.asarray(trajectories["K3"].order_parameter[1]), atol=1e-7)


def _bonds(setup, state, index):
    nbrs, vg = setup["nbrs"], setup["vg"]
    graph = kinetics.bond_graph(state.positions[index], vg.cell, nbrs, KINETIC_CUTOFF, vg.pinned_species)
    mu = vg.chemical_potential(state.state[index], nbrs)
    difference = np.asarray(graph.neighbor_values(mu) - mu[:, None])
    return graph, difference, np.asarray(graph.mask)


@pytest.mark.parametrize("name", ["K1", "K2-gradient", "K3"])
def test_long_time_state_is_the_constrained_minimiser(trajectories, minimiser, setup, name):
    trajectory = trajectories[name]
    _, mu_difference, mask = _bonds(setup, trajectory, -1)
    assert np.max(np.abs(mu_difference[mask])) < 1e-8  # equal total μ on every bond
    assert minimiser.residual < 1e-10
    np.testing.assert_allclose(np.asarray(trajectory.order_parameter[-1]), np.asarray(minimiser.order_parameter),
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(trajectory.positions[-1]), np.asarray(minimiser.positions), atol=1e-6)
    assert float(trajectory.free_energy[-1]) == pytest.approx(float(minimiser.free_energy), abs=1e-9)


def test_self_consistent_equilibrium_is_the_newton_one(minimiser, setup):
    """equilibrium(method="self-consistent") (fixed point of s = tanh(β(λ − μ^ex)), no Jacobian)
    reaches Newton's constrained minimiser."""
    state = dmd.equilibrium(setup["vg"], setup["state"], setup["nbrs"], relax_tolerance=1e-11,
                            method="self-consistent")
    assert state.residual < 1e-10 and state.iterations > 1
    np.testing.assert_allclose(np.asarray(state.order_parameter), np.asarray(minimiser.order_parameter), atol=1e-8)
    assert float(state.free_energy) == pytest.approx(float(minimiser.free_energy), abs=1e-10)
    assert float(jnp.sum(state.order_parameter)) == pytest.approx(float(jnp.sum(setup["s0"])), abs=1e-12)
    with pytest.raises(ValueError, match="method must be"):
        dmd.equilibrium(setup["vg"], setup["state"], setup["nbrs"], method="fixed")


@pytest.mark.parametrize("method", ["newton", "self-consistent"])
def test_float32_equilibrium_converges_to_its_default_tolerance(minimiser, setup, method):
    """In float32 the default tolerance (1e-4 eV) lies above the rounding floor of μ_i − λ, and the
    state agrees with the float64 minimiser; a float64 tolerance there fails with a clear error."""
    state = setup["state"]
    single = dj.DMDState(*(jnp.asarray(a, jnp.float32) for a in (state.positions, state.stiffness,
                                                                  state.order_parameter)))
    assert dmd.default_equilibrium_tolerance(jnp.float32) == 1e-4
    result = dmd.equilibrium(setup["vg"], single, setup["nbrs"], method=method)
    assert result.residual <= 1e-4 and result.order_parameter.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(result.order_parameter), np.asarray(minimiser.order_parameter), atol=1e-3)
    with pytest.raises(dmd.DMDError, match="did not reach"):
        dmd.equilibrium(setup["vg"], single, setup["nbrs"], method=method, tolerance=1e-10, max_steps=10)


def test_relaxing_at_output_times_only_converges_to_the_quasistatic_run(trajectories, setup):
    """relax_at="interval" holds (X, k) inside each output interval: Σs is still exact, F still
    decreases from output to output, and the state at t = 5 approaches the quasistatic run's as
    the intervals shrink, at first order (error ≈ halved when the interval is halved)."""
    law, _ = LAWS["K3"]
    reference = np.asarray(trajectories["K3"].order_parameter[2])  # t = 5, relaxed at every evaluation
    errors = []
    for n_intervals in (4, 8, 16):
        times = np.linspace(0.0, 5.0, n_intervals + 1)
        run = dmd.run(setup["vg"], setup["state"], setup["nbrs"], law, times,
                      kinetic_cutoff=KINETIC_CUTOFF, relax_at="interval", **OPTIONS)
        s = np.asarray(run.order_parameter)
        assert np.max(np.abs(s.sum(axis=1) - s[0].sum())) < 1e-12
        assert np.all(np.diff(np.asarray(run.free_energy)) <= 1e-12)
        assert run.parameters["relax_at"] == "interval"
        errors.append(np.max(np.abs(s[-1] - reference)))
    assert errors[0] > 1e-5  # the lag is real
    assert 1.6 < errors[0] / errors[1] < 2.5 and 1.6 < errors[1] / errors[2] < 2.5
    with pytest.raises(ValueError, match="relax_at"):
        dmd.run(setup["vg"], setup["state"], setup["nbrs"], law, times,
                kinetic_cutoff=KINETIC_CUTOFF, relax_at="evaluation")


def test_exact_spin_diffusion_fixed_point(trajectories, minimiser, setup):
    """K2 with the exact swap divided difference stops where artanh s_j − artanh s_i = β D_ij,
    i.e. μ_j − μ_i = −J_ij (s_j − s_i): not the minimiser of F (a mean-field closure effect)."""
    trajectory = trajectories["K2-exact"]
    vg = setup["vg"]
    graph, mu_difference, mask = _bonds(setup, trajectory, -1)
    s = trajectory.order_parameter[-1]
    coupling = kinetics.pair_coupling(vg, trajectory.state[-1], graph)
    predicted = -np.asarray(coupling * (graph.neighbor_values(s) - s[:, None]))
    np.testing.assert_allclose(mu_difference[mask], predicted[mask], atol=1e-9)
    assert np.max(np.abs(predicted[mask])) > 1e-4  # the J term is really there
    distance = np.max(np.abs(np.asarray(s - minimiser.order_parameter)))
    assert 1e-4 < distance < 0.05


def test_spin_diffusion_linearises_to_gradient_flow():
    """Near s = 0, K2 (gradient variant) = K1 with k_c = β/(2τ) + O(a³): the relative rate error ∝ a²."""
    potential = dj.LennardJones([[1.0, 0.8], [0.8, 0.9]], [[1.0, 1.05], [1.05, 1.1]], species=("A", "B"),
                                cutoff=2.6)
    n = 8
    ring = dj.systems.chain(n, 1.05, periodic=True)
    nbrs = dj.neighbor_list(ring.positions, ring.cell, potential.cutoff, skin=0.4)
    vg = dj.VGFreeEnergy(potential, ring.cell, dj.units.temperature_from_thermal_energy(KT), n)
    graph = kinetics.bond_graph(ring.positions, ring.cell, nbrs, KINETIC_CUTOFF)
    pattern = jnp.cos(2 * jnp.pi * jnp.arange(n) / n) + 0.3 * jnp.sin(4 * jnp.pi * jnp.arange(n) / n)
    pattern = pattern - pattern.mean()
    errors = []
    for amplitude in (0.1, 0.05, 0.025):
        s = amplitude * pattern
        relaxed = dj.relax(vg, vg.initial_state(ring.positions, s, nbrs), nbrs, tolerance=1e-12)
        rates = [dmd.species_rate(vg, relaxed.state, nbrs, law, graph)
                 for law in (dmd.SpinDiffusion(TAU, "gradient"), dmd.GradientFlow(1.0 / KT / (2 * TAU)))]
        errors.append(float(jnp.max(jnp.abs(rates[0] - rates[1])) / jnp.max(jnp.abs(rates[1]))))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert errors[0] < 0.03
    np.testing.assert_allclose(ratios, 4.0, rtol=0.05)  # halving a quarters the relative error


def _euler_run(setup, mobility, dt0, output=None):
    """Forward Euler with a constant step (the last step of an interval is cut at the output time)."""
    return dmd.run(setup["vg"], setup["state"], setup["nbrs"], dmd.GradientFlow(mobility),
                   [0.0, 1e-3, 1.0], kinetic_cutoff=KINETIC_CUTOFF, solver=diffrax.Euler(),
                   stepsize_controller=diffrax.ConstantStepSize(), dt0=dt0, max_steps=16, output=output)


def test_forced_bad_step_is_reported_and_the_last_good_state_saved(setup, tmp_path):
    output = tmp_path / "bad.npz"
    # One Euler step of 1e-3 is harmless; the next one (length ~1) throws s out of (−1, 1).
    with pytest.raises(dmd.DMDError, match=r"DMD stopped in \(0.001, 1\]: s left \(-1, 1\) or became non-finite "
                                           r"at sites \[[0-9, ]+\]; the last good state is at t = 0.001 and is "
                                           r"saved in") as info:
        _euler_run(setup, 100.0, 1.0, output)
    saved = dmd.load_trajectory(output)
    assert saved.time.tolist() == [0.0, 1e-3]
    np.testing.assert_array_equal(np.asarray(saved.order_parameter),
                                  np.asarray(info.value.trajectory.order_parameter))
    assert np.all(np.abs(np.asarray(saved.order_parameter)[:, 1:]) < 1)
    assert not np.array_equal(np.asarray(saved.order_parameter[1]), np.asarray(saved.order_parameter[0]))
    # Too many steps for max_steps: the solver failure is reported the same way.
    with pytest.raises(dmd.DMDError, match=r"DMD stopped in \(0.001, 1\]: the ODE solver \(after 16 steps; "
                                           r"max_steps=16\) .* last good state is at t = 0.001$"):
        _euler_run(setup, 100.0, 1e-4)


CHILD = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from dmd_chain import NEIGHBORS, STATE, VG
    from dmdjax import dmd
    save = dmd.Trajectory.save

    def slow_save(*args):  # a slow run: time for the parent to kill it between checkpoints
        save(*args)
        time.sleep(1.0)

    dmd.Trajectory.save = slow_save
    dmd.run(VG, STATE, NEIGHBORS, dmd.SpinDiffusion(0.1, "exact"), [0, 0.5, 1, 1.5, 2, 2.5, 3],
            kinetic_cutoff=1.4, output=sys.argv[1], rtol=1e-9, atol=1e-11, tolerance=1e-11, max_steps=20000)
    """
)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(setup, tmp_path):
    """SIGKILL a run after two checkpoints; resuming from the file gives the same final state
    bit for bit (float64, CPU) as the run that was never interrupted."""
    output = tmp_path / "run.npz"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(output), TESTS], env={**os.environ, "JAX_PLATFORMS": "cpu"})
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if output.exists() and dmd.load_trajectory(output).time.shape[0] >= 3:
                child.send_signal(signal.SIGKILL)
                break
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    written = dmd.load_trajectory(output).time.shape[0]
    assert 3 <= written < 7
    law, times = dmd.SpinDiffusion(0.1, "exact"), [0, 0.5, 1, 1.5, 2, 2.5, 3]
    arguments = (setup["vg"], setup["state"], setup["nbrs"], law, times)
    with pytest.raises(FileExistsError, match="resume=True"):
        dmd.run(*arguments, kinetic_cutoff=KINETIC_CUTOFF, output=output, **OPTIONS)
    with pytest.raises(ValueError, match=r"different parameters: \['kinetic_cutoff'\]"):
        dmd.run(*arguments, kinetic_cutoff=1.3, output=output, resume=True, **OPTIONS)
    resumed = dmd.run(*arguments, kinetic_cutoff=KINETIC_CUTOFF, output=output, resume=True, **OPTIONS)
    uninterrupted = dmd.run(*arguments, kinetic_cutoff=KINETIC_CUTOFF, **OPTIONS)
    for name in ("time", "order_parameter", "positions", "stiffness", "free_energy"):
        np.testing.assert_array_equal(np.asarray(getattr(resumed, name)), np.asarray(getattr(uninterrupted, name)))
    on_disk = dmd.load_trajectory(output)  # the file now holds the whole run, parameters included
    np.testing.assert_array_equal(np.asarray(on_disk.order_parameter), np.asarray(uninterrupted.order_parameter))
    assert on_disk.parameters == uninterrupted.parameters
    with np.load(output) as data:
        assert set(data.files) == {"time", "order_parameter", "positions", "stiffness", "free_energy", "parameters",
                                   "neighbor_builds"}
        assert data["positions"].shape == (7, 6, 1) and data["positions"].dtype == np.float64



def test_a_checkpoint_with_float32_times_resumes(setup, tmp_path):
    """Without x64, JAX stores the checkpoint's times in float32 (0.1 → 0.10000000149…): they
    are still the prefix of the float64 save_times, so the run resumes."""
    import equinox as eqx

    output = tmp_path / "run.npz"
    law, times = dmd.SpinDiffusion(0.1, "exact"), [0.0, 0.1, 0.3]
    arguments = (setup["vg"], setup["state"], setup["nbrs"], law)
    done = dmd.run(*arguments, times[:2], kinetic_cutoff=KINETIC_CUTOFF, output=output, **OPTIONS)
    eqx.tree_at(lambda t: t.time, done, np.asarray(done.time, np.float32)).save(output)
    assert dmd.load_trajectory(output).time.dtype == np.float32
    resumed = dmd.run(*arguments, times, kinetic_cutoff=KINETIC_CUTOFF, output=output, resume=True, **OPTIONS)
    assert resumed.time.shape == (3,)
    np.testing.assert_array_equal(np.asarray(resumed.order_parameter)[:2], np.asarray(done.order_parameter))
    with pytest.raises(ValueError, match="not a prefix"):
        dmd.run(*arguments, [0.0, 0.2, 0.3], kinetic_cutoff=KINETIC_CUTOFF, output=output, resume=True, **OPTIONS)

@pytest.mark.slow
def test_gradients_through_a_whole_run_match_finite_differences(setup):
    """dL/dθ of a loss on a DMD trajectory (dmd.solve, K2 exact, fixed steps) by reverse mode
    (diffrax's checkpointed adjoint and the relaxation's implicit derivatives) against central
    differences, for a potential parameter (ε_AB), a kinetic one (τ) and the temperature."""
    import equinox as eqx
    import jax

    vg, chain, nbrs = setup["vg"], setup["chain"], setup["nbrs"]
    from dmdjax.relax import hessian_colouring

    colouring = hessian_colouring(vg, nbrs)  # Newton relaxations
    start = dj.relax(vg, setup["state"], nbrs, tolerance=1e-12)
    graph = kinetics.bond_graph(chain.positions, vg.cell, nbrs, KINETIC_CUTOFF, pinned_species=vg.pinned_species)
    times = jnp.linspace(0.0, 1.0, 5)
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(5, 6)))
    swap = jnp.array([[0.0, 1.0], [1.0, 0.0]])

    def loss(theta):
        epsilon_ab, tau, temperature = theta
        model = eqx.tree_at(lambda v: (v.potential.epsilon, v.temperature), vg,
                            (vg.potential.epsilon + (epsilon_ab - vg.potential.epsilon[0, 1]) * swap, temperature))
        solution = dmd.solve(model, start.state, nbrs, dmd.SpinDiffusion(tau, "exact"), graph, times,
                             stepsize_controller=diffrax.ConstantStepSize(), dt0=0.05, tolerance=1e-12,
                             relax_method="newton", colouring=colouring)
        return jnp.sum(weights * solution.order_parameter), solution.ok

    theta = jnp.array([0.9, TAU, float(vg.temperature)])
    (value, ok), gradient = eqx.filter_jit(jax.value_and_grad(loss, has_aux=True))(theta)
    assert bool(ok)
    value_only = eqx.filter_jit(lambda t: loss(t)[0])
    for k in range(3):
        h = 1e-5 * float(theta[k])
        step = jnp.zeros(3).at[k].set(h)
        difference = (float(value_only(theta + step)) - float(value_only(theta - step))) / (2 * h)
        print(f"parameter {k}: gradient {float(gradient[k]):.10g}, central difference {difference:.10g}")
        assert float(gradient[k]) == pytest.approx(difference, rel=1e-4), (k, float(gradient[k]), difference)
    assert np.all(np.abs(np.asarray(gradient) * np.asarray(theta)) > 1e-3)  # every parameter matters


@pytest.mark.slow
def test_a_vmapped_batch_equals_separate_runs(setup):
    """B = 3 temperatures in one vmapped dmd.solve call give the three separate solves."""
    import equinox as eqx
    import jax

    vg, chain, nbrs = setup["vg"], setup["chain"], setup["nbrs"]
    start = dj.relax(vg, setup["state"], nbrs, tolerance=1e-12)
    graph = kinetics.bond_graph(chain.positions, vg.cell, nbrs, KINETIC_CUTOFF, pinned_species=vg.pinned_species)
    times = jnp.linspace(0.0, 2.0, 5)

    def run(temperature):
        model = eqx.tree_at(lambda v: v.temperature, vg, temperature)
        return dmd.solve(model, start.state, nbrs, dmd.SpinDiffusion(TAU, "exact"), graph, times, rtol=1e-9,
                         atol=1e-11, tolerance=1e-12).order_parameter

    temperatures = float(vg.temperature) * jnp.array([0.8, 1.0, 1.5])
    batch = eqx.filter_jit(jax.vmap(run))(temperatures)
    single = eqx.filter_jit(run)
    for b, temperature in enumerate(temperatures):
        np.testing.assert_allclose(np.asarray(batch[b]), np.asarray(single(temperature)), rtol=0, atol=1e-10)
    assert float(jnp.max(jnp.abs(batch[0] - batch[2]))) > 1e-3  # the temperatures matter


@pytest.mark.slow
def test_a_sharded_batch_equals_the_unsharded_one(tmp_path):
    """4 CPU devices faked by XLA: the batch of 4 temperatures sharded over them (jax.sharding)
    gives the unsharded batch's trajectories (to rounding: 9e-12 seen)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from dmd_chain import CHAIN as chain, NEIGHBORS as nbrs, STATE as state, VG as vg
        import equinox as eqx, jax, jax.numpy as jnp, numpy as np, dmdjax as dj
        from jax.sharding import Mesh, NamedSharding, PartitionSpec
        from dmdjax import dmd, kinetics
        assert len(jax.devices()) == 4
        start = dj.relax(vg, state, nbrs, tolerance=1e-12)
        graph = kinetics.bond_graph(chain.positions, vg.cell, nbrs, 1.4, pinned_species=vg.pinned_species)
        times = jnp.linspace(0.0, 1.0, 3)

        def run(temperature):
            model = eqx.tree_at(lambda v: v.temperature, vg, temperature)
            return dmd.solve(model, start.state, nbrs, dmd.SpinDiffusion(0.1, "exact"), graph, times, rtol=1e-9,
                             atol=1e-11, tolerance=1e-12).order_parameter

        temperatures = float(vg.temperature) * jnp.linspace(0.7, 1.4, 4)
        batch = eqx.filter_jit(jax.vmap(run))
        plain = np.asarray(batch(temperatures))
        sharding = NamedSharding(Mesh(np.array(jax.devices()), ("batch",)), PartitionSpec("batch"))
        sharded = batch(jax.device_put(temperatures, sharding))
        assert len(sharded.sharding.device_set) == 4
        print("max difference", np.max(np.abs(np.asarray(sharded) - plain)))
        assert np.max(np.abs(np.asarray(sharded) - plain)) < 1e-10  # rounding: reductions partitioned differently
        """
    )
    path = tmp_path / "sharded.py"
    path.write_text(script)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4 --xla_cpu_use_fusion_emitters=false")
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "max difference" in result.stdout


EQUAL_TIMES = np.array([0.0, 0.5, 2.0, 6.0])


@pytest.mark.parametrize("relax_at", ["rhs", "interval"])
@pytest.mark.parametrize("name", [pytest.param("K1", marks=pytest.mark.slow), "K2-exact",
                                  pytest.param("K3", marks=pytest.mark.slow)])
def test_run_and_solve_give_the_same_trajectory(setup, name, relax_at):
    """The host loop (dmd.run) and the pure driver (dmd.solve) share the interval function: the
    same trajectory (states and F) to 1e-12 in float64, for every law and both relax_at."""
    law, _ = LAWS[name]
    options = dict(rtol=1e-9, atol=1e-11, tolerance=1e-11, relax_at=relax_at)
    ran = dmd.run(setup["vg"], setup["state"], setup["nbrs"], law, EQUAL_TIMES, kinetic_cutoff=KINETIC_CUTOFF,
                  **options)
    assert ran.neighbor_builds == ()  # no rebuild: the two drivers see the same list
    graph = kinetics.bond_graph(setup["chain"].positions, setup["vg"].cell, setup["nbrs"], KINETIC_CUTOFF,
                                pinned_species=setup["vg"].pinned_species)
    solved = dmd.solve(setup["vg"], setup["state"], setup["nbrs"], law, graph, EQUAL_TIMES, throw=True, **options)
    assert bool(solved.ok) and np.all(np.asarray(solved.valid))
    worst = 0.0
    for name_ in ("order_parameter", "positions", "stiffness", "free_energy"):
        difference = np.max(np.abs(np.asarray(getattr(ran, name_)) - np.asarray(getattr(solved, name_))))
        worst = max(worst, difference)
        assert difference <= 1e-12, (name_, difference)
    print(f"{name} relax_at={relax_at}: max |run − solve| = {worst:.2e}")
    s = np.asarray(solved.order_parameter)
    assert np.max(np.abs(s[-1] - s[0])) > 1e-3  # the species moved


def test_solve_throw_raises_the_run_error(setup):
    """A step that throws s out of (−1, 1): dmd.solve(throw=True) raises the DMDError that
    dmd.run raises, with the same message; without throw it flags the solution."""
    law = dmd.GradientFlow(100.0)
    times = [0.0, 1e-3, 1.0]
    options = dict(solver=diffrax.Euler(), stepsize_controller=diffrax.ConstantStepSize(), dt0=1.0, max_steps=16)
    with pytest.raises(dmd.DMDError) as from_run:
        dmd.run(setup["vg"], setup["state"], setup["nbrs"], law, times, kinetic_cutoff=KINETIC_CUTOFF, **options)
    graph = kinetics.bond_graph(setup["chain"].positions, setup["vg"].cell, setup["nbrs"], KINETIC_CUTOFF,
                                pinned_species=setup["vg"].pinned_species)
    with pytest.raises(dmd.DMDError) as from_solve:
        dmd.solve(setup["vg"], setup["state"], setup["nbrs"], law, graph, times, throw=True, **options)
    assert str(from_solve.value) == str(from_run.value)
    assert str(from_solve.value).startswith("DMD stopped in (0.001, 1]: s left (-1, 1)")
    flagged = dmd.solve(setup["vg"], setup["state"], setup["nbrs"], law, graph, times, **options)
    assert not bool(flagged.ok) and np.asarray(flagged.valid).tolist() == [True, True, False]


@pytest.mark.slow
def test_a_jitted_solve_is_the_same_integration(setup):
    """Inside jit, dmd.solve is one lax.scan over the intervals: the same trajectory as the host
    loop up to rounding (the intervals compiled together)."""
    import equinox as eqx

    law, _ = LAWS["K2-exact"]
    options = dict(rtol=1e-9, atol=1e-11, tolerance=1e-11)
    graph = kinetics.bond_graph(setup["chain"].positions, setup["vg"].cell, setup["nbrs"], KINETIC_CUTOFF,
                                pinned_species=setup["vg"].pinned_species)
    host = dmd.solve(setup["vg"], setup["state"], setup["nbrs"], law, graph, EQUAL_TIMES, **options)
    jitted = eqx.filter_jit(lambda vg, state: dmd.solve(vg, state, setup["nbrs"], law, graph,
                                                        jnp.asarray(EQUAL_TIMES), **options))(setup["vg"],
                                                                                              setup["state"])
    assert bool(jitted.ok)
    difference = float(jnp.max(jnp.abs(jitted.order_parameter - host.order_parameter)))
    print(f"max |jit − host| = {difference:.2e}")
    assert difference < 1e-9
    assert int(jitted.num_steps) == int(host.num_steps)
