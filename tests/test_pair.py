"""Pair tables against jax-md's own pair energies, and their cut-off modes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax_md import energy as jmd_energy
from jax_md import space

import dmdjax as dj

BOX = 7.0


def _random_binary(n=120, seed=0, min_distance=0.8):
    """Random positions in a periodic cube with no pair closer than ``min_distance``."""
    rng = np.random.default_rng(seed)
    points = []
    while len(points) < n:
        p = rng.uniform(0, BOX, 3)
        if all(np.linalg.norm((p - q + BOX / 2) % BOX - BOX / 2) > min_distance for q in points):
            points.append(p)
    species = rng.integers(0, 2, n)
    return np.array(points), species


def _ours(potential, positions, species):
    system = dj.make_system(positions, species, cell=[BOX] * 3, pbc=True, species_names=potential.species)
    return float(dj.evaluate(potential, system, skin=0.3).energy)


# jax-md down-casts parameters that are not float64 jnp arrays to float32: pass jnp arrays.
SIGMA = np.array([[1.0, 1.1], [1.1, 1.2]])
EPSILON = np.array([[1.0, 0.6], [0.6, 0.8]])


def test_lennard_jones_matches_jax_md():
    positions, species = _random_binary()
    potential = dj.LennardJones(EPSILON, SIGMA, species=("A", "B"))  # jax-md defaults: 2.5/2.0 max sigma
    displacement, _ = space.periodic(BOX)
    reference = jmd_energy.lennard_jones_pair(displacement, species=jnp.asarray(species), sigma=jnp.asarray(SIGMA),
                                              epsilon=jnp.asarray(EPSILON), r_onset=2.0, r_cutoff=2.5)
    expected = float(reference(jnp.asarray(positions)))
    assert abs(_ours(potential, positions, species) - expected) < 1e-10 * max(1.0, abs(expected))


def test_morse_matches_jax_md():
    positions, species = _random_binary(seed=1)
    r0, alpha, depth = np.array([[1.0, 1.05], [1.05, 1.1]]), np.array([[4.0, 4.5], [4.5, 5.0]]), EPSILON
    potential = dj.Morse(depth, alpha, r0, species=("A", "B"), cutoff=2.5, onset=2.0)
    displacement, _ = space.periodic(BOX)
    reference = jmd_energy.morse_pair(displacement, species=jnp.asarray(species), sigma=jnp.asarray(r0),
                                      epsilon=jnp.asarray(depth), alpha=jnp.asarray(alpha), r_onset=2.0, r_cutoff=2.5)
    expected = float(reference(jnp.asarray(positions)))
    assert abs(_ours(potential, positions, species) - expected) < 1e-10 * max(1.0, abs(expected))


def test_harmonic_bond_matches_jax_md_springs():
    positions, species = _random_binary(seed=2)
    cutoff = 1.6
    spring, rest = np.array([[2.0, 3.0], [3.0, 4.0]]), np.array([[1.0, 1.1], [1.1, 1.2]])
    potential = dj.HarmonicBond(spring, rest, species=("A", "B"), cutoff=cutoff)
    # The same spring network as explicit jax-md bonds (pairs within the cut-off).
    delta = (positions[:, None] - positions[None] + BOX / 2) % BOX - BOX / 2
    distance = np.linalg.norm(delta, axis=-1)
    i, j = np.nonzero(np.triu(distance < cutoff, k=1))
    displacement, _ = space.periodic(BOX)
    bond_type = jnp.asarray(species[i] * 2 + species[j])
    reference = jmd_energy.simple_spring_bond(
        displacement, jnp.stack([i, j], 1), bond_type=bond_type,
        length=jnp.asarray(rest.reshape(-1)), epsilon=jnp.asarray(spring.reshape(-1)),
    )
    expected = float(reference(jnp.asarray(positions)))
    assert len(i) > 10
    assert abs(_ours(potential, positions, species) - expected) < 1e-10 * max(1.0, abs(expected))


def test_tabulated_pair_interpolates_lennard_jones():
    lj = dj.LennardJones(EPSILON, SIGMA, species=("A", "B"), cutoff=3.0, cutoff_mode="shift")
    grid = np.linspace(0.7, 3.0, 4001)
    table = np.asarray(lj.pair(jnp.asarray(grid)))
    tabulated = dj.TabulatedPair(grid[0], grid[1] - grid[0], table, species=("A", "B"))
    r = jnp.linspace(0.85, 2.95, 777)
    np.testing.assert_allclose(tabulated.pair(r), lj.pair(r), atol=1e-7)
    assert float(jnp.abs(tabulated.pair(jnp.asarray([3.0, 3.5]))).max()) == 0.0


@pytest.mark.parametrize("mode", ["hard", "shift", "smooth"])
def test_cutoff_modes(mode):
    lj = dj.LennardJones(1.0, 1.0, cutoff=2.5, cutoff_mode=mode, onset=2.0 if mode == "smooth" else None)
    phi = lambda r: lj.pair(jnp.asarray(r))[0, 0]
    assert float(phi(2.5 + 1e-9)) == 0.0
    below = float(phi(2.5 - 1e-9))
    if mode == "hard":
        assert below == pytest.approx(4 * (2.5**-12 - 2.5**-6), rel=1e-6)
    else:
        assert abs(below) < 1e-8  # continuous energy
    if mode == "smooth":
        assert abs(float(jax.grad(phi)(2.5 - 1e-9))) < 1e-6  # C1
        assert float(phi(1.5)) == pytest.approx(4 * (1.5**-12 - 1.5**-6), rel=1e-12)


def test_pair_parameters_differentiable():
    positions, species = _random_binary(n=30, seed=3)
    system = dj.make_system(positions, species, cell=[BOX] * 3, pbc=True, species_names=("A", "B"))
    nbrs = dj.neighbor_list(system.positions, system.cell, 3.0, skin=0.2)

    base = dj.LennardJones(EPSILON, SIGMA, species=("A", "B"), cutoff=3.0)

    def energy(eps_ab):
        eps = base.epsilon.at[0, 1].set(eps_ab).at[1, 0].set(eps_ab)
        potential = eqx.tree_at(lambda p: p.epsilon, base, eps)
        return dj.potential_energy(potential, system.positions, system.species, system.cell, nbrs)

    g = float(jax.grad(energy)(0.6))
    fd = float((energy(0.6 + 1e-6) - energy(0.6 - 1e-6)) / 2e-6)
    assert g == pytest.approx(fd, rel=1e-6)
