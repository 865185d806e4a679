"""The species kinetic laws K1-K3 as pure functions: conservation, Lyapunov sign, limits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmdjax as dj
from dmdjax import kinetics

LJ = dj.LennardJones([[1.0, 0.5], [0.5, 0.9]], [[1.0, 1.1], [1.1, 1.2]], species=("A", "B"), cutoff=2.6)


def _chain(n=12, seed=0):
    chain = dj.systems.chain(n, 1.1, pinned=[0])
    nbrs = dj.neighbor_list(chain.positions, chain.cell, LJ.cutoff, skin=0.3)
    graph = kinetics.bond_graph(chain.positions, chain.cell, nbrs, 2.4)
    rng = np.random.default_rng(seed)
    s = jnp.asarray(rng.uniform(-0.9, 0.9, n))
    mu_ex = jnp.asarray(rng.normal(0, 0.05, n))
    return chain, nbrs, graph, s, mu_ex


def _laws(chain, nbrs, graph, s, mu_ex, beta=20.0):
    mu = mu_ex + jnp.arctanh(s) / beta
    vg = dj.VGFreeEnergy(LJ, chain.cell, dj.units.temperature_from_beta(beta), chain.n_atoms)
    k = jnp.full(chain.n_atoms, 40.0)
    coupling = kinetics.pair_coupling(vg, dj.DMDState(chain.positions, k, s), graph)
    return {
        "K1": kinetics.gradient_flow(s, mu, graph, 0.7),
        "K1-mobility": kinetics.gradient_flow(s, mu, graph, lambda a, b: (1 - a * a) * (1 - b * b)),
        "K2-exact": kinetics.spin_diffusion(s, kinetics.swap_divided_difference(s, mu_ex, coupling, graph), graph,
                                            beta, 2.0),
        "K2-gradient": kinetics.spin_diffusion(s, kinetics.gradient_divided_difference(mu_ex, graph), graph, beta,
                                               2.0),
        "K3": kinetics.master_equation(s, mu_ex, graph, beta, 10.0, 0.1),
    }, mu


def test_every_law_conserves_the_total():
    chain, nbrs, graph, s, mu_ex = _chain()
    assert graph.n_bonds == 2 * chain.n_atoms - 3  # first and second neighbours of a free chain
    rates, _ = _laws(chain, nbrs, graph, s, mu_ex)
    for name, rate in rates.items():
        assert abs(float(jnp.sum(rate))) < 1e-13 * float(jnp.sum(jnp.abs(rate))), name


def test_free_energy_decreases_along_k1_k2_gradient_k3():
    """dF/dt = Σ μ_i ṡ_i at fixed (X, k): every bond flux runs down the total chemical potential."""
    chain, nbrs, graph, s, mu_ex = _chain(seed=1)
    rates, mu = _laws(chain, nbrs, graph, s, mu_ex)
    for name in ("K1", "K1-mobility", "K2-gradient", "K3"):
        assert float(jnp.dot(mu, rates[name])) < 0, name
    # K1 closed form: dF/dt = -1/2 Σ_ij k_c (μ_i - μ_j)^2.
    dmu = graph.neighbor_values(mu) - mu[:, None]
    expected = -0.5 * 0.7 * float(jnp.sum(jnp.where(graph.mask, dmu**2, 0.0)))
    assert float(jnp.dot(mu, rates["K1"])) == pytest.approx(expected, rel=1e-12)


def test_swap_divided_difference_is_exact_and_finite_at_equal_s():
    chain, nbrs, graph, s, _ = _chain(seed=2)
    s = s.at[4].set(s[5])  # one bond with s_i = s_j: the limit, no division
    beta = 20.0
    vg = dj.VGFreeEnergy(LJ, chain.cell, dj.units.temperature_from_beta(beta), chain.n_atoms)
    k = jnp.full(chain.n_atoms, 40.0)
    average = lambda s: vg.average_energy(dj.DMDState(chain.positions, k, s), nbrs)  # noqa: E731
    mu_ex = jax.grad(average)(s)
    coupling = kinetics.pair_coupling(vg, dj.DMDState(chain.positions, k, s), graph)
    divided = kinetics.swap_divided_difference(s, mu_ex, coupling, graph)
    assert bool(jnp.all(jnp.isfinite(divided)))
    idx, mask = np.asarray(graph.idx), np.asarray(graph.mask)
    for i in (2, 4, 7):
        for m in np.flatnonzero(mask[i]):
            j = idx[i, m]
            if abs(float(s[j] - s[i])) < 1e-12:
                limit = float(mu_ex[i] - mu_ex[j])
                assert float(divided[i, m]) == pytest.approx(limit, rel=1e-12)
                continue
            swapped = s.at[i].set(s[j]).at[j].set(s[i])
            exact = (average(swapped) - average(s)) / (s[j] - s[i])
            assert float(divided[i, m]) == pytest.approx(float(exact), rel=1e-9, abs=1e-12)


def test_k2_linearises_to_k1_with_kc_beta_over_two_tau():
    """Near s = 0 (and small μ^ex) K2 = K1 with k_c = β/(2τ) to first order (seed eq. 40)."""
    chain, nbrs, graph, s, mu_ex = _chain(seed=3)
    beta, tau = 20.0, 2.0
    errors = []
    for amplitude in (1e-1, 1e-2, 1e-3):
        s_small, mu_small = amplitude * s, amplitude * mu_ex
        mu = mu_small + jnp.arctanh(s_small) / beta
        k2 = kinetics.spin_diffusion(s_small, kinetics.gradient_divided_difference(mu_small, graph), graph, beta, tau)
        k1 = kinetics.gradient_flow(s_small, mu, graph, beta / (2 * tau))
        errors.append(float(jnp.max(jnp.abs(k2 - k1)) / jnp.max(jnp.abs(k1))))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4
    assert errors[1] / errors[2] > 50  # second order in the amplitude


def test_pinned_species_bonds_carry_no_flux():
    chain = dj.systems.chain(8, 1.1)
    nbrs = dj.neighbor_list(chain.positions, chain.cell, LJ.cutoff, skin=0.3)
    pinned = np.zeros(8, bool)
    pinned[0] = True
    graph = kinetics.bond_graph(chain.positions, chain.cell, nbrs, 2.4, pinned_species=pinned)
    s = jnp.linspace(0.9, -0.9, 8)
    rate = kinetics.gradient_flow(s, jnp.arange(8.0), graph, 1.0)
    assert float(rate[0]) == 0.0 and abs(float(jnp.sum(rate))) < 1e-14
    with pytest.raises(ValueError, match="exceeds the neighbour list's range"):
        kinetics.bond_graph(chain.positions, chain.cell, nbrs, 5.0)


def test_k3_fixed_point_has_equal_total_chemical_potential():
    """At equal total μ on every bond the master-equation flux vanishes."""
    chain, nbrs, graph, _, mu_ex = _chain(seed=4)
    beta, level = 20.0, 0.01
    s = jnp.tanh(beta * (level - mu_ex))  # β⁻¹ artanh(s) + μ^ex = level everywhere
    rate = kinetics.master_equation(s, mu_ex, graph, beta, 10.0, 0.1)
    assert float(jnp.max(jnp.abs(rate))) < 1e-12
    rate = kinetics.spin_diffusion(s, kinetics.gradient_divided_difference(mu_ex, graph), graph, beta, 1.0)
    assert float(jnp.max(jnp.abs(rate))) < 1e-12
