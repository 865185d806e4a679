"""The VG free energy (F1): closed forms, limits, quadrature vs Monte Carlo, derivatives."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_alloy

import dmdjax as dj
from dmdjax.quadrature import gaussian_average, monte_carlo_average


def _tethers(kappa_ab, kappa_bb, rest_ab, rest_bb, n_pairs=4):
    """Pairs (anchor: pinned atom and pinned species B; free site 1 Å to its right), 10 Å apart.

    Each free site then feels exactly one harmonic tether: in the mean field
    c φ_AB + (1 − c) φ_BB, a quadratic in its position.
    """
    positions = np.zeros((2 * n_pairs, 1))
    positions[0::2, 0] = 10.0 * np.arange(n_pairs)
    positions[1::2, 0] = 10.0 * np.arange(n_pairs) + 1.0
    anchors = np.arange(0, 2 * n_pairs, 2)
    system = dj.make_system(positions, pinned=anchors)
    potential = dj.HarmonicBond([[0.0, kappa_ab], [kappa_ab, kappa_bb]], [[1.0, rest_ab], [rest_ab, rest_bb]],
                                species=("A", "B"), cutoff=1.6)
    return system, potential


def test_harmonic_tether_closed_form():
    """Seed eq. (13) with β⁻¹ on the stiffness term: F* = Σ_i [V_min,i + β⁻¹(½ ln(βκ_i/2π) + c ln c + (1−c) ln(1−c))]."""
    kappa_ab, kappa_bb, rest_ab, rest_bb = 30.0, 50.0, 1.0, 1.1
    system, potential = _tethers(kappa_ab, kappa_bb, rest_ab, rest_bb)
    temperature = 120.0
    beta = 1.0 / (dj.BOLTZMANN_EV_PER_K * temperature)
    n = system.n_atoms
    s_free = np.array([0.3, -0.5, 0.7, 0.0])
    order_parameter = jnp.asarray(np.where(np.arange(n) % 2 == 0, -1.0, np.repeat(s_free, 2)))
    vg = dj.VGFreeEnergy(potential, system.cell, temperature, n, pinned=system.pinned,
                         pinned_species=system.pinned)
    nbrs = dj.neighbor_list(system.positions, system.cell, potential.cutoff, skin=0.2)
    start = system.positions.at[1::2].add(0.03)
    result = dj.relax(vg, vg.initial_state(start, order_parameter, nbrs), nbrs, tolerance=1e-10)
    c = 0.5 * (1 + s_free)
    kappa = c * kappa_ab + (1 - c) * kappa_bb
    rest = (c * kappa_ab * rest_ab + (1 - c) * kappa_bb * rest_bb) / kappa
    v_min = 0.5 * (c * kappa_ab * (rest - rest_ab) ** 2 + (1 - c) * kappa_bb * (rest - rest_bb) ** 2)
    mixing = c * np.log(c) + (1 - c) * np.log(1 - c)
    expected = np.sum(v_min + (0.5 * np.log(beta * kappa / (2 * np.pi)) + mixing) / beta)
    assert bool(result.converged)
    assert abs(float(result.free_energy) - expected) < 1e-10
    np.testing.assert_allclose(np.asarray(result.stiffness)[1::2], kappa, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(result.positions)[1::2, 0] - np.asarray(system.positions)[0::2, 0],
                               rest, rtol=1e-9)


LJ = dj.LennardJones([[1.0, 0.6], [0.6, 0.8]], [[1.0, 1.1], [1.1, 1.2]], species=("A", "B"), cutoff=3.0)


def test_quadrature_rules_against_monte_carlo(mendelev):
    """The default rule is within the Monte Carlo error (10⁶ samples); other rules are reported."""
    key = jax.random.PRNGKey(0)
    cases = [
        (LJ, 1.2, 0.08**2, 3),  # DESIGN.md's LJ anchor: R = 1.2 σ, σ_ij = 0.08 σ
        (LJ, 1.05, 0.1**2, 3),
        (mendelev, 2.86, 0.16**2, 3),  # Al nearest neighbours, ~300 K
        (mendelev, 4.05, 0.2**2, 3),  # second neighbours, hotter
        (LJ, 1.2, 0.08**2, 1),
        (LJ, 1.2, 0.08**2, 2),
    ]
    for potential, distance, variance, dim in cases:
        mean, error = monte_carlo_average(potential, distance, variance, dim, 1_000_000, key)
        rule = gaussian_average(potential, jnp.asarray(distance), jnp.asarray(variance), dim)
        deviation = np.abs(np.asarray(rule) - np.asarray(mean)) / np.asarray(error)
        assert np.all(deviation[np.asarray(error) > 0] < 4.0), (potential.species, distance, dim, deviation)


def test_third_degree_rule_is_cheap_but_off():
    """The 2d-point rule errs by about 0.5 % on the LJ anchor (DESIGN.md §2), GH by ≪ 0.1 %."""
    exact = gaussian_average(LJ, jnp.asarray(1.2), jnp.asarray(0.08**2), 3, nodes=40)[0, 0, 0]
    cheap = gaussian_average(LJ, jnp.asarray(1.2), jnp.asarray(0.08**2), 3, rule="third-degree")[0, 0, 0]
    default = gaussian_average(LJ, jnp.asarray(1.2), jnp.asarray(0.08**2), 3)[0, 0, 0]
    assert 1e-3 < abs(float(cheap / exact) - 1) < 2e-2
    assert abs(float(default / exact) - 1) < 1e-5


def _alloy_state(mendelev, seed=0, repeats=(4, 4, 4)):
    atoms = random_alloy(repeats=repeats, noise=0.05, fraction=0.3, seed=seed)
    system = dj.from_ase(atoms, species_names=mendelev.species)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.5)
    return system, nbrs


def test_stiff_limit_and_pure_species_reproduce_the_plain_potential(mendelev):
    system, nbrs = _alloy_state(mendelev)
    n = system.n_atoms
    order_parameter = jnp.where(system.species == 0, 1.0, -1.0)  # Al: s = +1
    vg = dj.VGFreeEnergy(mendelev, system.cell, 300.0, n, pinned_species=np.ones(n, bool))
    plain = float(dj.potential_energy(mendelev, system.positions, system.species, system.cell, nbrs))
    average = float(vg.average_energy(dj.DMDState(system.positions, jnp.full(n, 1e12), order_parameter), nbrs))
    assert abs(average - plain) < 1e-9 * abs(plain)
    # Pair potential, 1-D chain.
    chain = dj.systems.chain(12, 1.1, species=[0] * 6 + [1] * 6, species_names=("A", "B"))
    nb = dj.neighbor_list(chain.positions, chain.cell, LJ.cutoff, skin=0.2)
    vg = dj.VGFreeEnergy(LJ, chain.cell, 300.0, 12, pinned_species=np.ones(12, bool))
    s = jnp.where(chain.species == 0, 1.0, -1.0)
    plain = float(dj.potential_energy(LJ, chain.positions, chain.species, chain.cell, nb))
    average = float(vg.average_energy(dj.DMDState(chain.positions, jnp.full(12, 1e12), s), nb))
    assert abs(average - plain) < 1e-9 * abs(plain)


def test_gradient_matches_finite_differences(mendelev):
    system, nbrs = _alloy_state(mendelev, seed=1, repeats=(5, 5, 5))  # soft k reach 0.99 Å: a wider cell
    n = system.n_atoms
    rng = np.random.default_rng(0)
    k = jnp.asarray(rng.uniform(1.5, 3.0, n))
    s = jnp.asarray(rng.uniform(-0.8, 0.8, n))
    vg = dj.VGFreeEnergy(mendelev, system.cell, 500.0, n)
    nbrs = vg.neighbor_list(system.positions, k, skin=nbrs.skin)  # k down to 1.5: the Gaussians reach 0.99 Å
    f = jax.jit(lambda x, k, s: vg(dj.DMDState(x, k, s), nbrs))
    gx, gk, gs = jax.grad(f, argnums=(0, 1, 2))(system.positions, k, s)
    h = 1e-6
    for i in rng.choice(n, 4, replace=False):
        fd = (f(system.positions.at[i, 1].add(h), k, s) - f(system.positions.at[i, 1].add(-h), k, s)) / (2 * h)
        assert abs(float(fd - gx[i, 1])) < 1e-6
        fd = (f(system.positions, k.at[i].add(h), s) - f(system.positions, k.at[i].add(-h), s)) / (2 * h)
        assert abs(float(fd - gk[i])) < 1e-6
        fd = (f(system.positions, k, s.at[i].add(h)) - f(system.positions, k, s.at[i].add(-h))) / (2 * h)
        assert abs(float(fd - gs[i])) < 1e-6
    # μ = β⁻¹ artanh(s) + μ^ex
    mu = vg.chemical_potential(dj.DMDState(system.positions, k, s), nbrs)
    mu_ex = vg.excess_chemical_potential(dj.DMDState(system.positions, k, s), nbrs)
    np.testing.assert_allclose(np.asarray(mu), np.asarray(gs), atol=1e-12)
    np.testing.assert_allclose(np.asarray(mu - mu_ex), np.arctanh(np.asarray(s)) / float(vg.beta), atol=1e-10)


def test_jit_vmap_over_states_and_temperatures_float32():
    chain = dj.systems.chain(16, 1.1, species=[0] * 8 + [1] * 8, species_names=("A", "B"), pinned=[0])
    nb = dj.neighbor_list(chain.positions, chain.cell, LJ.cutoff, skin=0.3)
    vg = dj.VGFreeEnergy(LJ, chain.cell, 0.02 / dj.BOLTZMANN_EV_PER_K, 16, pinned=chain.pinned)
    s = jnp.linspace(0.8, -0.8, 16)
    k = jnp.full(16, 30.0)
    temperatures = jnp.array([100.0, 200.0, 300.0])
    batched = jax.jit(jax.vmap(
        lambda t: eqx.tree_at(lambda v: v.temperature, vg, t)(dj.DMDState(chain.positions, k, s), nb)))(temperatures)
    single = [float(eqx.tree_at(lambda v: v.temperature, vg, t)(dj.DMDState(chain.positions, k, s), nb))
              for t in temperatures]
    np.testing.assert_allclose(np.asarray(batched), single, rtol=1e-12)
    states = jnp.stack([s, 0.5 * s, -s])
    batched = jax.vmap(lambda ss: vg(dj.DMDState(chain.positions, k, ss), nb))(states)
    np.testing.assert_allclose(np.asarray(batched),
                               [float(vg(dj.DMDState(chain.positions, k, ss), nb)) for ss in states],
                               rtol=1e-12)
    f32 = vg(dj.DMDState(chain.positions.astype(jnp.float32), k.astype(jnp.float32), s.astype(jnp.float32)), nb)
    assert f32.dtype == jnp.float32
    f64 = float(vg(dj.DMDState(chain.positions, k, s), nb))
    assert abs(float(f32) - f64) < 1e-5 * abs(f64)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(k=-1.0), r"stiffness must be finite and > 0 \(eV/Å²\); got -1.0 at index \(2,\)"),
        (dict(s=1.0), r"order_parameter must lie strictly inside \(-1, 1\); got 1.0 at index \(3,\)"),
        (dict(x=np.nan), r"positions must be finite; got nan"),
        (dict(shape=True), r"DMDState needs .*got positions \(8, 1\), stiffness \(7,\)"),
    ],
)
def test_bad_input(kwargs, message):
    chain = dj.systems.chain(8, 1.1, species=[0] * 4 + [1] * 4, species_names=("A", "B"))
    nb = dj.neighbor_list(chain.positions, chain.cell, LJ.cutoff, skin=0.3)
    vg = dj.VGFreeEnergy(LJ, chain.cell, 300.0, 8)
    x = np.asarray(chain.positions).copy()
    k = np.full(8, 20.0)
    s = np.zeros(8)
    if "k" in kwargs:
        k[2] = kwargs["k"]
    if "s" in kwargs:
        s[3] = kwargs["s"]
    if "x" in kwargs:
        x[1, 0] = kwargs["x"]
    if "shape" in kwargs:
        k = k[:7]
    with pytest.raises(ValueError, match=message):
        vg(dj.DMDState(jnp.asarray(x), jnp.asarray(k), jnp.asarray(s)), nb)


def test_bad_temperature_and_quadrature():
    chain = dj.systems.chain(4, 1.1)
    with pytest.raises(ValueError, match="temperature must be finite and > 0 K; got 0.0"):
        dj.VGFreeEnergy(LJ, chain.cell, 0.0, 4)
    with pytest.raises(ValueError, match="quadrature must be one of"):
        dj.VGFreeEnergy(LJ, chain.cell, 300.0, 4, quadrature="simpson")
