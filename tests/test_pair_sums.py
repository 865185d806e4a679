"""The row-blocked sums with analytic gradients (dmdjax.pair_sums) against the reverse-mode
autodiff of the independent per-pair assembly (energy.assemble_site_energies), float64."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_alloy

import dmdjax as dj
from dmdjax import pair_sums
from dmdjax.energy import as_weights, assemble_site_energies, pair_geometry, site_energies_from_geometry


def _autodiff_free_energy(vg, nbrs):
    """F by the per-pair assembly over vg.averaged_radial, differentiated by JAX: the oracle."""

    def free_energy(state):
        averaged = vg.averaged_radial(state.positions, state.stiffness, nbrs)
        weights = vg.species_weights(state.order_parameter)
        average = jnp.sum(assemble_site_energies(vg.potential, averaged, weights, nbrs.idx))
        return average + jnp.sum(vg.entropy_terms(state.stiffness, state.order_parameter))

    return free_energy


def _alloy_state(mendelev, temperature, surface=False, seed=0):
    atoms = random_alloy((5, 5, 5), noise=0.06, seed=seed)
    if surface:  # a free surface along z: vacuum instead of the periodic image
        atoms.pbc = (True, True, False)
    system = dj.from_ase(atoms)
    n = system.n_atoms
    rng = np.random.default_rng(seed)
    pinned = np.zeros(n, bool)
    pinned[rng.choice(n, 6, replace=False)] = True
    pinned_species = np.zeros(n, bool)
    pinned_species[rng.choice(n, 5, replace=False)] = True
    vg = dj.VGFreeEnergy(mendelev, system.cell, temperature, n, pinned=pinned, pinned_species=pinned_species)
    s = rng.uniform(-0.9, 0.9, n)
    s[pinned_species] = rng.choice([-1.0, 1.0], pinned_species.sum())
    k = rng.uniform(2.5, 6.0, n)
    state = dj.DMDState(system.positions, jnp.asarray(k), jnp.asarray(s))
    return vg, state, vg.neighbor_list(system.positions, state.stiffness)


@pytest.mark.parametrize("temperature, surface", [pytest.param(300.0, False, marks=pytest.mark.slow), (600.0, True),
                                                  pytest.param(900.0, False, marks=pytest.mark.slow)])
def test_vg_free_energy_and_gradient_equal_autodiff(mendelev, temperature, surface):
    vg, state, nbrs = _alloy_state(mendelev, temperature, surface)
    oracle = _autodiff_free_energy(vg, nbrs)
    value, gradient = jax.value_and_grad(lambda st: vg(st, nbrs))(state)
    expected_value, expected_gradient = jax.value_and_grad(oracle)(state)
    assert abs(float(value - expected_value)) <= 1e-12 * abs(float(expected_value))
    for got, want in zip(jax.tree.leaves(gradient), jax.tree.leaves(expected_gradient)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(want))))
    # Second order through the JVP rule: Hessian-vector products.
    rng = np.random.default_rng(1)
    direction = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), state)
    got = jax.jvp(jax.grad(lambda st: vg(st, nbrs)), (state,), (direction,))[1]
    want = jax.jvp(jax.grad(oracle), (state,), (direction,))[1]
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-11 * float(jnp.max(jnp.abs(w))))


@pytest.mark.slow
def test_temperature_and_parameter_derivatives(mendelev):
    """∂F/∂T (through a_i = 1/(βk_i), outside the rule) and ∂F/∂θ for a spline scale (the rule's
    model tangent, forward mode through the sums) equal the oracle's."""
    vg, state, nbrs = _alloy_state(mendelev, 600.0)

    def by_temperature(temperature, free_energy):
        return free_energy(eqx.tree_at(lambda v: v.temperature, vg, temperature))

    got = jax.grad(lambda t: by_temperature(t, lambda v: v(state, nbrs)))(600.0)
    want = jax.grad(lambda t: by_temperature(t, lambda v: _autodiff_free_energy(v, nbrs)(state)))(600.0)
    np.testing.assert_allclose(got, want, rtol=1e-12)

    def by_scale(scale, free_energy):
        potential = eqx.tree_at(lambda p: p.embedding_spline.coefficients, mendelev,
                                scale * mendelev.embedding_spline.coefficients)
        return free_energy(eqx.tree_at(lambda v: v.potential, vg, potential))

    got = jax.grad(lambda c: by_scale(c, lambda v: v(state, nbrs)))(1.0)
    want = jax.grad(lambda c: by_scale(c, lambda v: _autodiff_free_energy(v, nbrs)(state)))(1.0)
    np.testing.assert_allclose(got, want, rtol=1e-12)


def _plain_oracle(potential, cell, nbrs):
    def energy(positions, species):
        weights = as_weights(species, potential.n_species, positions.dtype)
        return jnp.sum(site_energies_from_geometry(potential, pair_geometry(positions, cell, nbrs.idx), weights))

    return energy


def test_plain_energy_forces_equal_autodiff(mendelev):
    system = dj.from_ase(random_alloy((4, 4, 4), noise=0.1, seed=3))
    species = jnp.asarray(system.species)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff)
    oracle = _plain_oracle(mendelev, system.cell, nbrs)
    for labels in (species, as_weights(species, 2, system.positions.dtype) * 0.8 + 0.1):
        value, gradient = jax.value_and_grad(dj.potential_energy, argnums=1)(mendelev, system.positions, labels,
                                                                           system.cell, nbrs)
        want_value, want_gradient = jax.value_and_grad(oracle)(system.positions, labels)
        assert abs(float(value - want_value)) <= 1e-12 * abs(float(want_value))
        np.testing.assert_allclose(gradient, want_gradient, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(want_gradient))))
    result = dj.energy.evaluate_arrays(mendelev, system.positions, species, system.cell, nbrs, False)
    np.testing.assert_allclose(result.forces, -jax.grad(oracle)(system.positions, species), atol=1e-11)
    direction = jnp.asarray(np.random.default_rng(0).normal(size=system.positions.shape))
    got = jax.jvp(lambda x: jax.grad(dj.potential_energy, argnums=1)(mendelev, x, species, system.cell, nbrs),
                  (system.positions,), (direction,))[1]
    want = jax.jvp(lambda x: jax.grad(oracle)(x, species), (system.positions,), (direction,))[1]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-11 * float(jnp.max(jnp.abs(want))))


def test_blocks_do_not_change_the_sums(mendelev):
    """Any row-block size (one row, a size that does not divide N, all rows) gives the same sums."""
    vg, state, nbrs = _alloy_state(mendelev, 600.0, seed=2)
    weights = vg.species_weights(state.order_parameter)
    variance = vg.atom_variances(state.stiffness)
    radial = pair_sums.RadialAverages(mendelev, 3, "gauss-hermite", 8)
    n = state.n_sites
    results = [pair_sums.energy_gradient(pair_sums.pair_model(radial, vg.cell, nbrs.idx, rows), state.positions,
                                         variance, weights) for rows in (1, 7, 64, n)]
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(want))))


@pytest.mark.parametrize("dim, rule", [(1, "gauss-hermite"), pytest.param(2, "gauss-hermite", marks=pytest.mark.slow),
                                       pytest.param(3, "third-degree", marks=pytest.mark.slow)])
def test_generic_rules_equal_autodiff(dim, rule):
    """Rules without a closed form (derivatives by forward mode inside the rule) in 1-3 D."""
    lj = dj.LennardJones([[1.0, 0.6], [0.6, 0.8]], [[1.0, 1.1], [1.1, 1.2]], species=("A", "B"), cutoff=2.5)
    rng = np.random.default_rng(dim)
    shape = {1: (12,), 2: (6, 6), 3: (5, 5, 5)}[dim]
    grid = np.stack(np.meshgrid(*[np.arange(m) * 1.12 for m in shape], indexing="ij"), -1).reshape(-1, dim)
    positions = jnp.asarray(grid + rng.normal(0.0, 0.03, grid.shape))
    cell = dj.make_cell(np.diag([m * 1.12 for m in shape]), True, dim)
    n = positions.shape[0]
    vg = dj.VGFreeEnergy(lj, cell, 0.05 / dj.BOLTZMANN_EV_PER_K, n, quadrature=rule)
    state = dj.DMDState(positions, jnp.asarray(rng.uniform(20.0, 40.0, n)), jnp.asarray(rng.uniform(-0.8, 0.8, n)))
    nbrs = vg.neighbor_list(positions, state.stiffness, skin=0.1, margin=1.0) if dim > 1 else \
        vg.neighbor_list(positions, state.stiffness)
    value, gradient = jax.value_and_grad(lambda st: vg(st, nbrs))(state)
    want_value, want_gradient = jax.value_and_grad(_autodiff_free_energy(vg, nbrs))(state)
    assert abs(float(value - want_value)) <= 1e-12 * abs(float(want_value))
    for got, want in zip(jax.tree.leaves(gradient), jax.tree.leaves(want_gradient)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * float(jnp.max(jnp.abs(want))))
