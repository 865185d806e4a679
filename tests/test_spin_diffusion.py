"""The spin-diffusion sampler (DESIGN.md §5): local swap energies, exchange frequencies,
detailed balance by enumeration, Langevin variance, the joint stationary law, replicas."""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dmdjax as dj
from dmdjax import spin_diffusion as sd

KT = 0.1
LJ = dj.LennardJones([[1.0, 0.8], [0.8, 0.9]], [[1.0, 1.05], [1.05, 1.1]], species=("A", "B"), cutoff=2.6)


def _states(sampler, key, spins, times, n_replicas):
    """Full replica states at ``times`` (the low-level init/advance pair)."""
    keys = jax.random.split(key, n_replicas)
    x0 = jnp.broadcast_to(sampler.reference_positions, (n_replicas,) + sampler.reference_positions.shape)
    states = sd.init_replicas(sampler, keys, x0, jnp.broadcast_to(spins, (n_replicas, spins.shape[0])))
    out = []
    for t in times:
        states = sd.advance_replicas(sampler, states, jnp.asarray(t))
        out.append(states)
    return out


def _lj_chain(n, mode="frozen", kt=KT, skin=0.4, **kwargs):
    rng = np.random.default_rng(1)
    positions = 1.05 * np.arange(n)[:, None] + 0.03 * rng.normal(size=(n, 1))
    chain = dj.systems.chain(n, 1.05)
    nbrs = dj.neighbor_list(jnp.asarray(positions), chain.cell, LJ.cutoff, skin=skin)
    return sd.spin_diffusion_sampler(LJ, jnp.asarray(positions), chain.cell, nbrs, temperature=kt / dj.BOLTZMANN_EV_PER_K,
                                     kinetic_cutoff=1.4, mode=mode, **kwargs)


def test_local_swap_energy_equals_the_global_difference(mendelev):
    """Δ_ij V from the neighbourhoods of i and j equals V(σ^{ij}) − V(σ): pair (chain) and EAM (3-D)."""
    from ase.build import bulk

    sampler = _lj_chain(8)
    spins = jnp.array([1.0, 1, -1, 1, -1, -1, 1, -1])
    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((4, 4, 4))
    atoms.positions += np.random.default_rng(0).normal(0, 0.05, atoms.positions.shape)
    system = dj.from_ase(atoms, species_names=mendelev.species)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=0.3)
    eam = sd.spin_diffusion_sampler(mendelev, system.positions, system.cell, nbrs, temperature=600.0,
                                    kinetic_cutoff=3.0, mode="frozen")
    eam_spins = jnp.asarray(np.where(np.random.default_rng(2).random(system.n_atoms) < 0.3, -1.0, 1.0))
    for model, s in ((sampler, spins), (eam, eam_spins)):
        x = model.reference_positions
        energy, swap = eqx.filter_jit(model.energy), eqx.filter_jit(model.swap_energy_change)
        for i, j in np.asarray(model.bonds)[:: max(1, model.bonds.shape[0] // 12)]:
            swapped = s.at[i].set(s[j]).at[j].set(s[i])
            exact = float(energy(x, swapped) - energy(x, s))
            local = float(swap(x, s, i, j))
            assert local == pytest.approx(exact, abs=1e-10), (i, j)
        if model is eam:  # EAM: also sites that are not bonded (no shared row), and far apart
            rng = np.random.default_rng(3)
            for i, j in rng.choice(system.n_atoms, (6, 2), replace=False):
                swapped = s.at[i].set(s[j]).at[j].set(s[i])
                assert float(swap(x, s, i, j)) == pytest.approx(float(energy(x, swapped) - energy(x, s)), abs=1e-10)
        # The sampler's forces (analytic for pair potentials) are −∇V.
        np.testing.assert_allclose(np.asarray(model.force(x, s)), -np.asarray(jax.grad(model.energy)(x, s)),
                                   atol=1e-10)


@pytest.mark.parametrize("candidates", ["bonds", "minority"])
def test_exchange_frequencies_match_the_rates(candidates):
    """From a fixed (x, σ), accepted candidates per unit time on each bond → r_ij, whether a
    candidate is drawn over all bonds or over the σ = −1 sites' bond slots."""
    sampler = _lj_chain(8, kt=1.0, candidates=candidates, minority_sites=4)
    spins = jnp.array([1.0, 1, -1, 1, -1, -1, 1, -1])
    rates = np.asarray(sampler.exchange_rates(sampler.reference_positions, spins))
    state = sampler.init(jax.random.PRNGKey(0), sampler.reference_positions, spins)
    n = 200_000
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    after = jax.jit(jax.vmap(lambda k: sampler._candidate(state, jax.random.uniform(k, (2,)), None).spins))(keys)
    changed = np.asarray(after != spins[None])
    bonds = np.asarray(sampler.bonds)
    counts = np.array([np.sum(changed[:, i] & changed[:, j]) for i, j in bonds])
    probability = rates / float(sampler.candidate_rate)
    expected = n * probability
    frequency = counts / n * float(sampler.candidate_rate)
    assert np.all(np.abs(counts - expected) <= 4.5 * np.sqrt(expected * (1 - probability)) + 1), (counts, expected)
    assert np.sum((rates > 0.05) & (rates < 0.95)) >= 3 and np.allclose(frequency[rates == 0], 0)
    np.testing.assert_allclose(frequency[rates > 0], rates[rates > 0], rtol=0.05)


@pytest.mark.parametrize("mode", ["frozen", "joint"])
def test_eam_densities_and_minority_sites_are_kept_through_exchanges(mendelev, mode):
    """EAM, candidates over the Mg sites: after a run with many accepted exchanges the state's
    cached densities equal ρ_i recomputed from (x, σ), its minority list holds exactly the Mg
    sites, and the candidate count is Poisson(Λt), Λ = K·z/τ."""
    from ase.build import bulk

    atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((5, 5, 5))
    system = dj.from_ase(atoms, species_names=mendelev.species)
    nbrs = dj.neighbor_list(system.positions, system.cell, mendelev.cutoff, skin=1.2)  # moves ≤ 0.6 Å: 5σ at 400 K
    n_mg, n_replicas, t = 20, 4, 1.0
    sampler = sd.spin_diffusion_sampler(mendelev, system.positions, system.cell, nbrs, temperature=400.0,
                                        kinetic_cutoff=3.0, mode=mode, epsilon=1.0 / (4 * 0.02),
                                        langevin_step=0.02, candidates="minority", minority_sites=n_mg)
    assert float(sampler.candidate_rate) == n_mg * 12
    spins = np.ones(system.n_atoms)
    spins[np.random.default_rng(0).choice(system.n_atoms, n_mg, replace=False)] = -1.0
    (states,) = _states(sampler, jax.random.PRNGKey(4), jnp.asarray(spins), [t], n_replicas)
    assert int(states.accepted.sum()) > 50 and not bool(states.displaced.any())
    expected = n_replicas * float(sampler.candidate_rate) * t
    assert abs(int(states.candidates.sum()) - expected) < 5 * np.sqrt(expected)
    x = states.positions if mode == "joint" else jnp.broadcast_to(system.positions, states.positions.shape)
    np.testing.assert_allclose(np.asarray(states.density), np.asarray(jax.vmap(sampler.site_density)(x, states.spins)),
                               rtol=0, atol=1e-10)
    for replica in range(n_replicas):
        mg = np.flatnonzero(np.asarray(states.spins[replica]) < 0)
        assert sorted(np.asarray(states.minority[replica]).tolist()) == mg.tolist() and mg.size == n_mg


def test_advance_replicas_refuses_replicas_at_different_times():
    """The batched loop takes one step count for all replicas: replicas at different times would
    get the wrong number of Langevin steps, so it raises instead."""
    sampler = _lj_chain(8, mode="joint", epsilon=1.0, langevin_step=1e-3)
    spins = jnp.array([1.0, 1, -1, 1, -1, -1, 1, -1])
    x0 = jnp.broadcast_to(sampler.reference_positions, (2,) + sampler.reference_positions.shape)
    states = sd.init_replicas(sampler, jax.random.split(jax.random.PRNGKey(0), 2), x0, jnp.broadcast_to(spins, (2, 8)))
    states = eqx.tree_at(lambda s: s.time, states, jnp.array([0.0, 0.5]))
    with pytest.raises(Exception, match="do not share their time"):
        jax.block_until_ready(sd.advance_replicas(sampler, states, jnp.asarray(1.0)))


def test_replica_lists_follow_the_atoms():
    """A 24-site Lennard-Jones chain of A built compressed (spacing 1.08 against 1.12 at rest)
    expands by ~1 Å in joint mode: each replica's list is searched again at its mean positions,
    so the run stays valid with a skin of 0.6 Å (atoms may stray only 0.3 Å from a search)."""
    positions = 1.08 * jnp.arange(24.0)[:, None]
    chain = dj.systems.chain(24, 1.08)
    nbrs = dj.neighbor_list(positions, chain.cell, LJ.cutoff, skin=0.6)
    sampler = sd.spin_diffusion_sampler(LJ, positions, chain.cell, nbrs, temperature=0.01 / dj.BOLTZMANN_EV_PER_K,
                                        kinetic_cutoff=1.4, mode="joint", epsilon=1.0, langevin_step=2e-3)
    spins = jnp.ones(24).at[jnp.array([5, 17])].set(-1.0)
    (states,) = _states(sampler, jax.random.PRNGKey(5), spins, [8.0], 3)
    x = np.asarray(states.positions)[..., 0]
    assert not bool(states.displaced.any())
    assert np.all(x[:, -1] - x[:, 0] > 23 * 1.08 + 0.6)  # expanded: the ends moved beyond skin/2
    reach = jax.vmap(lambda nl, p: nl.reach(p))(states.neighbors, states.positions)
    assert np.all(np.asarray(reach) >= LJ.cutoff)


@pytest.mark.parametrize("n", [8, 160])  # a select over the sites, and (N > 128) a scatter
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.int8])  # the "frozen" loop carries int8 spins
def test_candidate_exchanges_exactly_the_bond_it_draws(n, dtype):
    """u_accept below τ r_ij exchanges σ_i, σ_j (and nothing else); above it, or on a bond
    with σ_i = σ_j, nothing changes; the counters count."""
    sampler = _lj_chain(n, kt=1.0)
    spins = jnp.asarray(np.where(np.random.default_rng(n).random(n) < 0.5, 1, -1), dtype)
    state = sampler.init(jax.random.PRNGKey(0), sampler.reference_positions, spins.astype(jnp.float64))
    state = eqx.tree_at(lambda s: s.spins, state, spins)
    bonds = np.asarray(sampler.bonds)
    probability = np.asarray(sampler.exchange_rates(sampler.reference_positions, spins.astype(jnp.float64)))
    probability = probability * float(sampler.tau)
    step = jax.jit(lambda u: sampler._candidate(state, u, None))
    swaps = 0
    for b in range(0, len(bonds), max(1, len(bonds) // 10)):
        i, j = bonds[b]
        u_bond = (b + 0.5) / len(bonds)
        for u_accept, accepted in ((0.999 * probability[b], True), (min(1.001 * probability[b], 1.0), False)):
            after = step(jnp.array([u_bond, u_accept]))
            expected = np.asarray(spins).copy()
            if accepted and spins[i] != spins[j]:
                expected[[i, j]] = expected[[j, i]]
            assert after.spins.dtype == dtype
            np.testing.assert_array_equal(np.asarray(after.spins), expected)
            assert int(after.candidates) == 1 and int(after.accepted) == int(not np.array_equal(expected, spins))
            swaps += int(after.accepted)
    assert swaps >= 3


@pytest.mark.slow
def test_gaussian_rate_average_matches_monte_carlo():
    """Scale-separated, rate_average="gaussian": the sampler relaxes (X*, k*) of the VG free
    energy at s = σ (as dmdjax.relax does), and a bond's acceptance frequency is τ E[r_ij(x)]
    over x ~ N(X*, (βk*)⁻¹), here estimated independently by averaging the geometric rates
    over 20 000 Gaussian samples."""
    kt, pinned = 0.2, np.arange(8) == 0  # atom 0 pinned: no translation mode
    spins = jnp.array([1.0, 1, -1, 1, -1, -1, 1, -1])
    lattice = _lj_chain(8, mode="scale-separated", kt=kt, rate_average="gaussian", skin=1.0, pinned=pinned)
    vg = lattice.free_energy
    reference = dj.relax(vg, vg.initial_state(lattice.reference_positions, spins, lattice.neighbors), lattice.neighbors)
    # The sampler's lattice (its list's reference) at the relaxed chain, which is about 1 Å longer.
    nbrs = dj.neighbor_list(reference.positions, lattice.free_energy.cell, LJ.cutoff, skin=0.4)
    sampler = sd.spin_diffusion_sampler(LJ, reference.positions, lattice.free_energy.cell, nbrs,
                                        temperature=kt / dj.BOLTZMANN_EV_PER_K, kinetic_cutoff=1.4,
                                        mode="scale-separated", rate_average="gaussian", pinned=pinned)
    state = sampler.init(jax.random.PRNGKey(0), sampler.reference_positions, spins)
    assert not bool(state.displaced)  # converged, and within the list's skin
    np.testing.assert_allclose(np.asarray(state.positions), np.asarray(reference.positions), atol=1e-5)
    np.testing.assert_allclose(np.asarray(state.stiffness), np.asarray(reference.stiffness), rtol=1e-4)

    width = np.where(pinned, 0.0, np.sqrt(kt / np.asarray(state.stiffness)))[None, :, None]
    x = np.asarray(state.positions)[None] + width * np.random.default_rng(4).normal(size=(20_000, 8, 1))
    mean_rates = np.asarray(jax.jit(jax.vmap(lambda p: sampler.exchange_rates(p, spins)))(jnp.asarray(x))).mean(0)

    n = 200_000
    keys = jax.random.split(jax.random.PRNGKey(1), n)
    candidate = lambda k: sampler._candidate(state, jax.random.uniform(k, (2,)), jax.random.fold_in(k, 7)).spins
    changed = np.asarray(jax.jit(jax.vmap(candidate))(keys) != spins[None])
    bonds = np.asarray(sampler.bonds)
    counts = np.array([np.sum(changed[:, i] & changed[:, j]) for i, j in bonds])
    expected = n * mean_rates * float(sampler.tau) / bonds.shape[0]
    assert np.sum((mean_rates > 0.05) & (mean_rates < 0.95)) >= 3  # non-trivial averages
    assert np.all(np.abs(counts - expected) <= 4.5 * np.sqrt(expected) + 1), (counts, expected)


@pytest.mark.parametrize("mode", ["frozen", "joint"])
def test_candidate_count_is_poisson(mode):
    """Uniformisation: the candidates of a replica up to time T are Poisson(ΛT) — mean and
    variance ΛT — whatever the call intervals (here uneven, and in "joint" not multiples of
    the Langevin step ε h, so the fast time owed is carried between calls)."""
    sampler = _lj_chain(8, mode=mode, kt=1.0, epsilon=1.0, langevin_step=0.013)
    times = np.array([0.05, 0.0501, 0.31, 0.77, 1.5])
    states = _states(sampler, jax.random.PRNGKey(8), jnp.array([1.0, 1, -1, 1, -1, -1, 1, -1]), times, 4000)
    expected = float(sampler.candidate_rate) * times
    counts = np.stack([np.asarray(s.candidates) for s in states])  # (T, R)
    r = counts.shape[1]
    assert np.all(np.diff(counts, axis=0) >= 0)
    for mean, variance, lam in zip(counts.mean(1), counts.var(1, ddof=1), expected):
        assert abs(mean - lam) < 4.5 * np.sqrt(lam / r), (mean, lam)
        assert abs(variance / lam - 1) < 4.5 * np.sqrt(2 / r) + 1 / lam, (variance, lam)
    assert np.allclose([float(s.time[0]) for s in states], times)
    if mode == "joint":  # the fast time owed after the last call: T/ε − h·(whole steps taken)
        owed = float(states[-1].fast_time_debt[0])
        assert 0 <= owed < 0.013 and (times[-1] - owed) / 0.013 == pytest.approx(round(times[-1] / 0.013))


def _histogram(spins, n):
    codes = ((spins.reshape(-1, n) > 0).astype(np.int64) << np.arange(n)).sum(axis=1)
    return np.bincount(codes, minlength=2 ** n)


def test_detailed_balance_by_enumeration():
    """x frozen, 10 sites, Σσ = 0: the sampled law of σ is e^{−βV} over all 252 states (TV < 0.01).

    1.2 M samples (4000 replicas × 300 times): TV 0.004. The sampling noise of the TV is about
    0.005–0.009 at 300 000 samples (1000 replicas; three seeds), too close to 0.01 to test."""
    n, kt = 10, 0.3
    sampler = _lj_chain(n, kt=kt)
    spins0 = jnp.array([1.0, -1] * 5)
    times = 5.0 + 2.0 * np.arange(300)
    states = _states(sampler, jax.random.PRNGKey(3), spins0, times, 4000)
    samples = np.stack([np.asarray(s.spins) for s in states])
    assert np.all(samples.sum(axis=-1) == 0)
    configurations = np.array([c for c in itertools.product((1.0, -1.0), repeat=n) if sum(c) == 0])
    energies = np.asarray(jax.vmap(lambda s: sampler.energy(sampler.reference_positions, s))(
        jnp.asarray(configurations)))
    weights = np.exp(-(energies - energies.min()) / kt)
    exact = np.zeros(2 ** n)
    codes = ((configurations > 0).astype(np.int64) << np.arange(n)).sum(axis=1)
    exact[codes] = weights / weights.sum()
    empirical = _histogram(samples, n) / samples.reshape(-1, n).shape[0]
    tv = 0.5 * np.abs(empirical - exact).sum()
    assert len(configurations) == 252 and exact.max() < 0.5  # a non-trivial law
    print("detailed balance: TV", tv, "max p", exact.max(), "samples", samples.reshape(-1, n).shape[0])
    assert tv < 0.01, tv


@pytest.mark.slow
def test_langevin_variance_of_a_harmonic_bond():
    """Overdamped Leimkuhler–Matthews Langevin: Var x = 1/(βκ) (exact for quadratic V)."""
    kappa = 5.0
    potential = dj.HarmonicBond(kappa, 1.0, species=("A", "B"), cutoff=3.0)  # the bond never breaks
    chain = dj.systems.chain(2, 1.0, pinned=[0])
    nbrs = dj.neighbor_list(chain.positions, chain.cell, potential.cutoff, skin=2.0)
    sampler = sd.spin_diffusion_sampler(potential, chain.positions, chain.cell, nbrs, temperature=KT / dj.BOLTZMANN_EV_PER_K,
                                        kinetic_cutoff=1.2, mode="joint", epsilon=1.0, langevin_step=0.05,
                                        pinned=chain.pinned)
    states = _states(sampler, jax.random.PRNGKey(4), jnp.array([1.0, 1.0]), 2.0 + 1.0 * np.arange(200), 2000)
    x = np.stack([np.asarray(s.positions[:, 1, 0]) for s in states])
    assert np.all(np.stack([np.asarray(s.positions[:, 0, 0]) for s in states]) == 0.0)  # pinned
    assert not np.any([np.asarray(s.displaced).any() for s in states])
    variance = x.var()
    assert variance == pytest.approx(KT / kappa, rel=0.01)
    assert x.mean() == pytest.approx(1.0, abs=3e-3)


def _spring_chain_distance(states, kappa, total):
    """TV distance of the sampled σ from the exact law of a free chain of springs κ_{σ_i σ_j}:
    ∫e^{−βV}dx ∝ Π_bonds κ_b^{-1/2} over {Σσ = total}."""
    samples = np.stack([np.asarray(s.spins) for s in states])
    n = samples.shape[-1]
    configurations = np.array([c for c in itertools.product((1.0, -1.0), repeat=n) if sum(c) == total])
    index = ((1 - configurations) / 2).astype(int)
    weights = np.prod(kappa[index[:, :-1], index[:, 1:]] ** -0.5, axis=1)
    exact = np.zeros(2 ** n)
    exact[((configurations > 0).astype(np.int64) << np.arange(n)).sum(axis=1)] = weights / weights.sum()
    empirical = _histogram(samples, n) / samples.reshape(-1, n).shape[0]
    return 0.5 * np.abs(empirical - exact).sum()


def _spring_chain_sampler(n, kappa, **options):
    """A free chain of harmonic bonds κ_{σ_i σ_j} (one rest length 1 Å), site 0 pinned, k_BT = 0.05 eV."""
    potential = dj.HarmonicBond(kappa, 1.0, species=("A", "B"), cutoff=1.5)
    chain = dj.systems.chain(n, 1.0, pinned=[0])
    nbrs = dj.neighbor_list(chain.positions, chain.cell, potential.cutoff, skin=2.0)
    return sd.spin_diffusion_sampler(potential, chain.positions, chain.cell, nbrs,
                                     temperature=0.05 / dj.BOLTZMANN_EV_PER_K, kinetic_cutoff=1.2, tau=0.1,
                                     pinned=chain.pinned, **options)


@pytest.mark.slow
def test_joint_stationary_law_of_the_spins():
    """Harmonic bonds κ_{σ_i σ_j} on a free chain: ∫e^{−βV}dx ∝ Π_bonds κ_b^{-1/2}, so the σ
    marginal of the joint (x, σ) process is known exactly; TV < 0.01."""
    n = 4
    kappa = np.array([[20.0, 80.0], [80.0, 45.0]])
    # One rest length: a swap at fixed x then costs O(k_B T) and σ mixes quickly; the
    # segregation is purely entropic (vibrational).
    sampler = _spring_chain_sampler(n, kappa, mode="joint", epsilon=1.0, langevin_step=0.004)
    spins0 = jnp.array([1.0, -1, 1, -1])
    # h λ_max(∇²V) ≤ 0.004 · 4 · 80 < 2: the Langevin step is stable.
    states = _states(sampler, jax.random.PRNGKey(5), spins0, 1.0 + 0.5 * np.arange(100), 1000)
    tv = _spring_chain_distance(states, kappa, total=0)
    assert tv < 0.01, tv
    assert not bool(np.any([np.asarray(s.displaced).any() for s in states]))


@pytest.mark.slow
def test_scale_separated_basin_sampler_has_the_exact_marginal():
    """ε → 0 with basin-averaged rates satisfies detailed balance with Z(σ) = ∫e^{−βV}dx, so its
    σ law is the joint process's. 3 sites, Σσ = 1 (3 states); TV < 0.015 (its sampling noise
    is about 0.005 here)."""
    n = 3
    kappa = np.array([[20.0, 40.0], [40.0, 30.0]])
    # h λ_max ≤ 0.01 · 4 · 40 < 2; 60 steps relax the slowest mode by e^{-4} (variance e^{-8}).
    sampler = _spring_chain_sampler(n, kappa, mode="scale-separated", rate_average="basin", basin_steps=60,
                                    langevin_step=0.01)
    states = _states(sampler, jax.random.PRNGKey(6), jnp.array([1.0, -1, 1]), 0.5 + 0.2 * np.arange(40), 1000)
    tv = _spring_chain_distance(states, kappa, total=1)
    assert tv < 0.015, tv


@pytest.mark.slow
def test_sample_averages_errors_file_and_sharding(tmp_path):
    """`sample`: E[σ](t) and standard errors, Σσ conserved, the .npz file; 8 fake CPU devices
    (replicas sharded) give the same numbers as one."""
    import json
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(
        """
        import sys, json, jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_enable_x64", True)
        import dmdjax as dj
        from dmdjax import spin_diffusion as sd
        lj = dj.LennardJones([[1.0, 0.8], [0.8, 0.9]], [[1.0, 1.05], [1.05, 1.1]], species=("A", "B"), cutoff=2.6)
        chain = dj.systems.chain(8, 1.05, pinned=[0])
        nbrs = dj.neighbor_list(chain.positions, chain.cell, lj.cutoff, skin=0.4)
        sampler = sd.spin_diffusion_sampler(lj, chain.positions, chain.cell, nbrs, temperature=0.3 / dj.BOLTZMANN_EV_PER_K,
                                            kinetic_cutoff=1.4, mode="frozen", pinned=chain.pinned,
                                            pinned_species=chain.pinned)
        spins = jnp.array([1.0, 1, 1, 1, -1, -1, -1, -1])
        out = sd.sample(sampler, jax.random.PRNGKey(0), spins, [0, 1, 2, 4], n_replicas=64, output=sys.argv[1])
        print(json.dumps({"devices": len(jax.devices()), "mean": np.asarray(out.order_parameter).tolist()}))
        """
    )
    results = []
    for devices in (1, 8):
        env = {**__import__("os").environ, "JAX_PLATFORMS": "cpu",
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        path = tmp_path / f"sample{devices}.npz"
        done = subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        results.append((json.loads(done.stdout.strip().splitlines()[-1]), path))
    (one, path_one), (eight, path_eight) = results
    assert one["devices"] == 1 and eight["devices"] == 8
    np.testing.assert_array_equal(np.asarray(one["mean"]), np.asarray(eight["mean"]))
    with np.load(path_eight) as data:
        parameters = json.loads(str(data["parameters"]))
        mean, error = data["order_parameter"], data["order_parameter_error"]
        assert data["time"].tolist() == [0, 1, 2, 4] and mean.shape == error.shape == (4, 8)
        np.testing.assert_allclose(mean.sum(axis=1), 0.0, atol=1e-12)  # Σσ conserved in every replica
        assert np.all(mean[:, 0] == 1.0) and np.all(error[:, 0] == 0.0)  # the pinned species
        assert error[1:, 1:].min() >= 0 and error[1:, 1:].max() > 0 and error.max() <= 1.0 / np.sqrt(63) + 1e-12
        assert data["accepted"][-1] > 0 and data["candidates"][-1] >= data["accepted"][-1]
    assert parameters["mode"] == "frozen" and parameters["n_replicas"] == 64 and parameters["devices"] == 8


def test_bad_input_is_named():
    sampler = _lj_chain(4)
    with pytest.raises(ValueError, match=r"spins must be ±1 .* value 0.5"):
        sd.sample(sampler, jax.random.PRNGKey(0), jnp.array([1.0, 0.5, -1, -1]), [0, 1], n_replicas=2)
    with pytest.raises(ValueError, match="positions cannot be given in 'frozen' mode"):
        sd.sample(sampler, jax.random.PRNGKey(0), jnp.array([1.0, 1, -1, -1]), [0, 1], n_replicas=2,
                  positions=sampler.reference_positions)
    with pytest.raises(ValueError, match="candidate exchanges per replica"):
        sd.sample(sampler, jax.random.PRNGKey(0), jnp.array([1.0, 1, -1, -1]), [0, 1e9], n_replicas=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        _lj_chain(4, mode="fast")
    with pytest.raises(ValueError, match="candidates must be one of"):
        _lj_chain(4, candidates="sites")
    with pytest.raises(ValueError, match="nonlocal_slots=2 needs candidates='minority'"):
        _lj_chain(4, nonlocal_slots=2)
    with pytest.raises(ValueError, match="needs minority_sites, a positive integer; got None"):
        _lj_chain(4, candidates="minority")
    with pytest.raises(ValueError, match=r"minority_sites=1: the spins have \[2\] sites of σ = −1"):
        sd.sample(_lj_chain(4, candidates="minority", minority_sites=1), jax.random.PRNGKey(0),
                  jnp.array([1.0, 1, -1, -1]), [0, 1], n_replicas=2)
    with pytest.raises(ValueError, match="tau must be finite and > 0; got -1"):
        _lj_chain(4, tau=-1.0)


@pytest.mark.slow
@pytest.mark.parametrize("candidates, nonlocal_slots", [("bonds", 0), ("minority", 0), ("minority", 4)])
def test_detailed_balance_by_enumeration_with_eam(mendelev, candidates, nonlocal_slots):
    """x frozen on a 14-atom fcc cube of Al (Mendelev 2009 EAM, free surfaces) with 3 Mg: the
    sampled law of σ equals the Boltzmann weights e^{−βV} of all 364 arrangements, V from
    :func:`dmdjax.energy.potential_energy` (a path independent of the sampler's local swap
    energies). Independent samples: one per replica, each started from a uniformly drawn
    arrangement and run to t = 10τ (~20 accepted exchanges). χ² over the arrangements with 6
    expected counts or more, and TV (its sampling noise at 10⁴ samples is ≈ 0.06). Candidates over
    all bonds, over the Mg sites' bond slots with the densities kept in the state, and with
    non-local exchanges added (which must keep the law)."""
    from scipy import stats

    from dmdjax.energy import potential_energy

    a, temperature = 4.05, 3000.0  # x is frozen: a temperature at which the exchanges mix in t ~ 10τ
    corners = np.array(list(itertools.product((0.0, 1.0), repeat=3)))
    faces = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 1.0], [0.5, 0.0, 0.5], [0.5, 1.0, 0.5], [0.0, 0.5, 0.5],
                      [1.0, 0.5, 0.5]])
    positions = jnp.asarray(a * np.concatenate([corners, faces]) + 10.0)
    n = positions.shape[0]
    cell = dj.Cell(jnp.eye(3) * 40.0, pbc=(False, False, False))
    nbrs = dj.neighbor_list(positions, cell, mendelev.cutoff, skin=0.5)
    sampler = sd.spin_diffusion_sampler(mendelev, positions, cell, nbrs, temperature=temperature, kinetic_cutoff=3.2,
                                        mode="frozen", candidates=candidates, minority_sites=3,
                                        nonlocal_slots=nonlocal_slots)
    mg = [c for c in itertools.combinations(range(n), 3)]
    configurations = np.ones((len(mg), n))
    for row, sites in enumerate(mg):
        configurations[row, list(sites)] = -1.0
    species = (configurations < 0).astype(np.int32)  # Al = 0, Mg = 1 in the file
    energies = np.array([float(potential_energy(mendelev, positions, jnp.asarray(s), cell, nbrs)) for s in species])
    beta = 1.0 / (dj.BOLTZMANN_EV_PER_K * temperature)
    exact = np.exp(-beta * (energies - energies.min()))
    exact /= exact.sum()
    assert len(mg) == 364 and exact.max() > 5 * exact.min() and np.ptp(energies) > 0.3  # a law with structure

    n_replicas = 10_000
    starts = configurations[np.random.default_rng(0).integers(0, len(mg), n_replicas)]
    states = sd.init_replicas(sampler, jax.random.split(jax.random.PRNGKey(11), n_replicas),
                              jnp.broadcast_to(positions, (n_replicas,) + positions.shape), jnp.asarray(starts))
    states = sd.advance_replicas(sampler, states, jnp.asarray(10.0))
    spins = np.asarray(states.spins)
    assert np.all((spins < 0).sum(axis=1) == 3)
    codes = ((spins < 0).astype(np.int64) << np.arange(n)).sum(axis=1)
    exact_codes = ((configurations < 0).astype(np.int64) << np.arange(n)).sum(axis=1)
    counts = np.array([np.count_nonzero(codes == c) for c in exact_codes])
    assert counts.sum() == n_replicas
    expected = exact * n_replicas
    often = expected >= 6
    observed = np.append(counts[often], counts[~often].sum())
    predicted = np.append(expected[often], expected[~often].sum())
    chi2 = float(((observed - predicted) ** 2 / predicted).sum())
    p_value = stats.chi2.sf(chi2, observed.size - 1)
    tv = 0.5 * np.abs(counts / n_replicas - exact).sum()
    print("EAM detailed balance: chi2", chi2, "dof", observed.size - 1, "p", p_value, "TV", tv)
    assert p_value > 1e-3, (chi2, p_value)
    assert tv < 0.09
