"""Quasistatic (X, k) relaxation: exact harmonic stiffness, implicit derivatives, reports."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmdjax as dj


def test_harmonic_chain_relaxed_stiffness_is_exact():
    """For quadratic V the VG optimum is k_i = tr ∇²_ii V / d: 2κ inside, κ at the free end."""
    kappa, n = 12.0, 10
    potential = dj.HarmonicBond(kappa, 1.0, cutoff=1.5)
    chain = dj.systems.chain(n, 1.0, pinned=[0])
    nbrs = dj.neighbor_list(chain.positions, chain.cell, potential.cutoff, skin=0.3)
    vg = dj.VGFreeEnergy(potential, chain.cell, 200.0, n, pinned=chain.pinned)
    start = chain.positions + 0.04 * np.random.default_rng(0).normal(size=(n, 1)) * (np.arange(n) > 0)[:, None]
    result = dj.relax(vg, dj.DMDState(start, jnp.full(n, 3.0), jnp.zeros(n)), nbrs, tolerance=1e-12)
    expected = np.r_[2 * kappa * np.ones(n - 2), kappa]
    np.testing.assert_allclose(np.asarray(result.stiffness)[1:], expected, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(result.positions)[:, 0], np.arange(n), atol=1e-10)
    assert bool(result.converged) and int(result.iterations) > 0 and float(result.gradient_norm) <= 1e-12
    # The first guess is already exact for a harmonic potential.
    guess = dj.initial_stiffness(vg, chain.positions, jnp.zeros(n), nbrs)
    np.testing.assert_allclose(np.asarray(guess)[1:], expected, rtol=1e-12)


def _lj_chain(epsilon_ab=0.7, sigma_ab=1.05, temperature=150.0):
    potential = dj.LennardJones([[1.0, epsilon_ab], [epsilon_ab, 0.8]], [[1.0, sigma_ab], [sigma_ab, 1.1]],
                                species=("A", "B"), cutoff=2.6)
    n = 10
    chain = dj.systems.chain(n, 1.1, pinned=[0])
    vg = dj.VGFreeEnergy(potential, chain.cell, temperature, n, pinned=chain.pinned)
    return vg, chain


def _covering_list(vg, chain, s, skin=0.5):
    """A list built where the chain relaxes (it stretches by up to 0.8 Å, past a 0.5 Å skin's
    reach from the start): what a relaxation inside jit or grad, which cannot rebuild, needs."""
    nbrs = dj.neighbor_list(chain.positions, chain.cell, vg.potential.cutoff, skin=skin)
    return dj.relax(vg, vg.initial_state(chain.positions, s, nbrs), nbrs).neighbors


def _relaxed(epsilon_ab, sigma_ab, temperature, s, nbrs, chain):
    vg, _ = _lj_chain(epsilon_ab, sigma_ab, temperature)
    result = dj.relax(vg, vg.initial_state(chain.positions, s, nbrs), nbrs, tolerance=1e-11)
    return jnp.concatenate([result.positions[:, 0], result.stiffness])


@pytest.mark.slow
def test_implicit_derivatives_match_finite_differences():
    vg, chain = _lj_chain()
    s = jnp.linspace(0.7, -0.7, chain.n_atoms)
    nbrs = _covering_list(vg, chain, s)
    base = (0.7, 1.05, 150.0)
    relaxed = lambda p: _relaxed(p[0], p[1], p[2], s, nbrs, chain)
    jacobian = jax.jacrev(relaxed)(jnp.asarray(base))
    # Forward mode (the implicit solvers' Jacobians) uses the same implicit rule.
    np.testing.assert_allclose(np.asarray(jax.jacfwd(relaxed)(jnp.asarray(base))), np.asarray(jacobian),
                               rtol=1e-9, atol=1e-12 * float(jnp.abs(jacobian).max()))
    for index, step in enumerate((1e-4, 1e-4, 1.0)):
        plus, minus = list(base), list(base)
        plus[index] += step
        minus[index] -= step
        fd = (_relaxed(*plus, s, nbrs, chain) - _relaxed(*minus, s, nbrs, chain)) / (2 * step)
        column = np.asarray(jacobian[:, index])
        significant = np.abs(np.asarray(fd)) > 1e-6 * np.abs(np.asarray(fd)).max()
        relative = np.abs(column - np.asarray(fd))[significant] / np.abs(np.asarray(fd))[significant]
        assert relative.max() < 1e-5, (index, relative.max())


@pytest.mark.slow
def test_relaxed_free_energy_gradient_in_temperature_is_the_envelope():
    vg, chain = _lj_chain()
    s = jnp.linspace(0.5, -0.5, chain.n_atoms)
    nbrs = _covering_list(vg, chain, s)

    def relaxed_free_energy(temperature):
        v = eqx.tree_at(lambda v: v.temperature, vg, temperature)
        return dj.relax(v, v.initial_state(chain.positions, s, nbrs), nbrs, tolerance=1e-11).free_energy

    gradient = float(jax.grad(relaxed_free_energy)(150.0))
    fd = float((relaxed_free_energy(150.5) - relaxed_free_energy(149.5)) / 1.0)
    assert gradient == pytest.approx(fd, rel=1e-6)


@pytest.mark.slow
def test_vmap_relax_over_temperatures_and_warm_start():
    vg, chain = _lj_chain()
    s = jnp.zeros(chain.n_atoms)
    nbrs = _covering_list(eqx.tree_at(lambda v: v.temperature, vg, 150.0), chain, s)
    temperatures = jnp.array([50.0, 150.0, 300.0])
    start = vg.initial_state(chain.positions, s, nbrs)
    batched = eqx.filter_jit(jax.vmap(
        lambda t: dj.relax(eqx.tree_at(lambda v: v.temperature, vg, t), start, nbrs)))(temperatures)
    for i, t in enumerate([50.0, 150.0, 300.0]):
        single = dj.relax(eqx.tree_at(lambda v: v.temperature, vg, t), start, nbrs)
        np.testing.assert_allclose(np.asarray(batched.stiffness[i]), np.asarray(single.stiffness), rtol=1e-6)
    # Hotter: softer Gaussians (anharmonic LJ) and larger mean spacing.
    assert np.all(np.diff(np.asarray(batched.stiffness)[:, 1:5].mean(1)) < 0)
    cold = dj.relax(vg, vg.initial_state(chain.positions, s, nbrs), nbrs)
    warm = dj.relax(vg, dj.DMDState(cold.positions, cold.stiffness, s + 0.01), nbrs)
    fresh = dj.relax(vg, vg.initial_state(chain.positions, s + 0.01, nbrs), nbrs)
    assert int(warm.iterations) < int(fresh.iterations)
    assert float(warm.free_energy) == pytest.approx(float(fresh.free_energy), abs=1e-9)


def test_non_convergence_is_reported():
    vg, chain = _lj_chain()
    s = jnp.zeros(chain.n_atoms)
    nbrs = dj.neighbor_list(chain.positions, chain.cell, vg.potential.cutoff, skin=0.5)
    with pytest.raises(eqx.EquinoxRuntimeError, match="relaxation of \\(X, k\\) did not converge"):
        dj.relax(vg, vg.initial_state(chain.positions, s, nbrs), nbrs, max_steps=2)
    flagged = dj.relax(vg, vg.initial_state(chain.positions, s, nbrs), nbrs, max_steps=2, throw=False)
    assert not bool(flagged.converged) and int(flagged.iterations) == 2 and float(flagged.gradient_norm) > 1e-6


@pytest.mark.slow
def test_fcc_aluminium_relaxes(mendelev):
    system = dj.systems.fcc(4.05, (4, 4, 4)).with_species_names(mendelev.species)
    n = system.n_atoms
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.5)
    vg = dj.VGFreeEnergy(mendelev, system.cell, 300.0, n)
    s = jnp.ones(n) * 0.98  # nearly pure Al
    result = dj.relax(vg, vg.initial_state(system.positions, s, nbrs), nbrs)
    assert bool(result.converged)
    k = np.asarray(result.stiffness)
    assert k.std() < 1e-6 * k.mean()  # every site equivalent
    einstein = np.asarray(dj.initial_stiffness(vg, system.positions, s, nbrs))
    # Same order as the harmonic (Einstein) estimate; the numbers are in docs/relaxation.md.
    assert 0.8 < k.mean() / einstein.mean() < 1.3


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["eam", "pair"])
def test_site_hessian_trace_matches_the_full_hessian(kind, mendelev):
    """The O(NM) diagonal-block traces (the stiffness first guess) equal those of jax.hessian."""
    rng = np.random.default_rng(0)
    if kind == "eam":
        from conftest import random_alloy

        atoms = random_alloy(repeats=(2, 2, 2), noise=0.1, fraction=0.3, pbc=False)
        potential, system = mendelev, dj.from_ase(atoms, species_names=mendelev.species)
    else:
        potential = dj.LennardJones([[1.0, 0.6], [0.6, 0.8]], [[1.0, 1.1], [1.1, 1.2]], species=("A", "B"))
        system = dj.make_system(rng.random((40, 3)) * 4, np.arange(40) % 2, species_names=("A", "B"))
    nbrs = dj.neighbor_list(system.positions, system.cell, potential.cutoff)
    traces = dj.energy.site_hessian_trace(potential, system.positions, system.species, system.cell, nbrs)
    hessian = jax.hessian(
        lambda x: dj.potential_energy(potential, x, system.species, system.cell, nbrs))(system.positions)
    expected = np.einsum("iaia->i", np.asarray(hessian))
    np.testing.assert_allclose(np.asarray(traces), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


@pytest.mark.slow
def test_newton_matches_lbfgs_with_a_coloured_hessian():
    """method="newton": the compressed Hessian equals jax.hessian (a pair chain), the
    minimum equals L-BFGS's, in a handful of iterations, and the implicit gradient agrees."""
    from dmdjax.relax import dense_hessian, hessian_colouring

    lj = dj.LennardJones([[1.0, 0.92], [0.92, 1.0]], [[1.0, 1.05], [1.05, 1.1]], species=("A", "B"), cutoff=2.7)
    n = 24
    pinned = np.arange(n) == 0
    chain = dj.systems.chain(n, 1.18, pinned=pinned)
    nbrs = dj.neighbor_list(chain.positions, chain.cell, lj.cutoff, skin=1.0)
    vg = dj.VGFreeEnergy(lj, chain.cell, 0.1 / dj.BOLTZMANN_EV_PER_K, n, pinned=pinned)
    s = jnp.asarray(np.sin(np.arange(n)) * 0.6)
    colouring = hessian_colouring(vg, nbrs)
    assert colouring.n_colours <= 9  # 2b + 1 whatever N (b = 3 or 4 here)

    for model, x, order, neighbours in ((vg, chain.positions, s, nbrs),):
        z = jnp.concatenate([x, jnp.log(jnp.full((x.shape[0], 1), 20.0))], axis=1)
        d = x.shape[1]
        objective = lambda z: model(dj.DMDState(z[:, :d], jnp.exp(z[:, d]), order), neighbours)
        dense = dense_hessian(jax.grad(objective), z, hessian_colouring(model, neighbours))
        exact = jax.hessian(objective)(z).reshape(dense.shape)
        np.testing.assert_allclose(np.asarray(dense), np.asarray(exact), atol=1e-9 * float(jnp.max(jnp.abs(exact))))

    newton = dj.relax(vg, vg.initial_state(chain.positions, s, nbrs), nbrs, method="newton", tolerance=1e-10)
    lbfgs = dj.relax(vg, vg.initial_state(chain.positions, s, nbrs), nbrs, tolerance=1e-10, max_steps=20000)
    assert bool(newton.converged) and int(newton.iterations) <= 10 < int(lbfgs.iterations)
    np.testing.assert_allclose(np.asarray(newton.positions), np.asarray(lbfgs.positions), atol=1e-8)
    np.testing.assert_allclose(np.asarray(newton.stiffness), np.asarray(lbfgs.stiffness), rtol=1e-8)
    # Under grad the relaxation cannot rebuild its list: give it the one the relaxed chain needs.
    relaxed_nbrs = newton.neighbors
    relaxed_colouring = hessian_colouring(vg, relaxed_nbrs)
    start = vg.initial_state(chain.positions, s, relaxed_nbrs)

    def energy(order, method):
        return dj.relax(vg, dj.DMDState(start.positions, start.stiffness, order), relaxed_nbrs, method=method, colouring=relaxed_colouring, tolerance=1e-10,
                        max_steps=20000).free_energy

    gradient = jax.grad(energy)(s, "newton")
    step = 1e-5 * jnp.asarray(np.cos(np.arange(n)))
    finite = (energy(s + step, "newton") - energy(s - step, "newton")) / 2
    assert float(jnp.dot(gradient, step)) == pytest.approx(float(finite), rel=1e-6)
    with pytest.raises(ValueError, match="method"):
        dj.relax(vg, vg.initial_state(chain.positions, s, nbrs), nbrs, method="bfgs")
    # The method is chosen explicitly, never inferred from an optional argument.
    with pytest.raises(ValueError, match="colouring is for method='newton'"):
        dj.relax(vg, vg.initial_state(chain.positions, s, nbrs), nbrs, colouring=colouring)


@pytest.mark.slow
def test_minimize_energy_matches_scipy(mendelev):
    """Molecular statics on the device (optax L-BFGS in one loop) reaches scipy's minimum of
    the same energy (an independent optimiser on the host), on a rattled slab with a free
    surface and one Mg, with pinned atoms kept in place."""
    from scipy.optimize import minimize

    system = dj.systems.fcc(4.05, (4, 5, 5), "Al", pbc=(False, True, True))
    rng = np.random.default_rng(0)
    positions = system.positions + jnp.asarray(rng.normal(0.0, 0.05, system.positions.shape))
    species = system.species.at[7].set(mendelev.species_index("Mg"))
    pinned = np.zeros(system.n_atoms, bool)
    pinned[:4] = True
    nbrs = dj.neighbor_list(positions, system.cell, mendelev.cutoff, skin=0.5)
    from dmdjax.relax import minimize_energy

    result = minimize_energy(mendelev, positions, species, system.cell, nbrs, pinned=pinned, tolerance=1e-7)
    assert bool(result.converged) and float(result.force_norm) <= 1e-7
    np.testing.assert_array_equal(result.positions[:4], positions[:4])
    free = ~pinned

    energy_and_gradient = jax.jit(jax.value_and_grad(
        lambda x: dj.potential_energy(mendelev, x, species, system.cell, nbrs)))

    def fun(flat):
        e, g = energy_and_gradient(positions.at[free].set(jnp.asarray(flat.reshape(-1, 3))))
        return float(e), np.asarray(g)[free].ravel()

    reference = minimize(fun, np.asarray(positions)[free].ravel(), jac=True, method="L-BFGS-B",
                         options={"gtol": 1e-8, "ftol": 1e-15, "maxiter": 5000})
    assert float(result.energy) == pytest.approx(reference.fun, rel=1e-10)
    np.testing.assert_allclose(np.asarray(result.positions)[free].ravel(), reference.x, atol=1e-5)
