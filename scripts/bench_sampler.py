"""Benchmark: candidate exchange events per second of the spin-diffusion sampler.

A 64-site Lennard-Jones chain (the chain study's potential), R replicas in one jitted,
vmapped loop, against a plain NumPy implementation of the same algorithm (uniformised
Kawasaki exchange with local swap energies, a Poisson number of candidates per interval in
which x is held; in "joint" mode one Leimkuhler–Matthews step per candidate on average)
written here for the comparison. NumPy runs replicas one after another, so
its rate does not depend on R: it is measured once per mode.

    python scripts/bench_sampler.py [--replicas 1 1000 10000] [--candidates-per-replica 500] [--float32]
                                    [--repeats 3] [--prng threefry2x32|rbg|unsafe_rbg] [--json out.json]
    python scripts/bench_sampler.py --eam [--eam-replicas 1 8 64]   # EAM, the surface slab (no NumPy loop)
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

N_SITES = 64
SPACING = 1.05
KT = 0.3
EPSILON_AB = 0.8


def build(mode, dtype):
    import dmdjax as dj
    from dmdjax import spin_diffusion as sd

    # A hard cut-off, as the NumPy loop's φ (the smooth switch would only add a factor to both).
    lj = dj.LennardJones([[1.0, EPSILON_AB], [EPSILON_AB, 0.9]], [[1.0, 1.05], [1.05, 1.1]], species=("A", "B"),
                         cutoff=2.6, cutoff_mode="hard")
    chain = dj.systems.chain(N_SITES, SPACING, pinned=[0])
    positions = chain.positions.astype(dtype)
    nbrs = dj.neighbor_list(positions, chain.cell, lj.cutoff, skin=0.6)
    # One LM step per candidate on average: ε h Λ = 1.
    tau, h = 1.0, 2e-3
    epsilon = tau / ((N_SITES - 1) * h)
    sampler = sd.spin_diffusion_sampler(lj, positions, chain.cell, nbrs, temperature=KT / dj.BOLTZMANN_EV_PER_K,
                                        kinetic_cutoff=1.4, mode=mode, tau=tau, epsilon=epsilon, langevin_step=h,
                                        pinned=chain.pinned)
    return sampler, lj


def jax_rate(mode, n_replicas, dtype, horizon, prng="threefry2x32", repeats=1):
    sampler, _ = build(mode, dtype)
    spins = jnp.where(jnp.arange(N_SITES) < N_SITES // 2, 1.0, -1.0).astype(dtype)
    return timed_rate(sampler, spins, n_replicas, dtype, horizon, prng, repeats)


def build_eam_slab(mode, candidates, dtype, n_mg=20):
    """The surface study's default slab (10 × 5 × 5 cubic cells of Al, 1000 atoms, two free (100)
    surfaces) with ``n_mg`` random Mg, Mendelev (2009) EAM, 600 K, the study's 2.5 Å skin; joint
    mode with 20 Langevin steps (h = 0.05) per τ."""
    from dmdjax import spin_diffusion as sd
    from dmdjax.neighbors import neighbor_list
    from dmdjax.studies.alloy import load_alloy_potential
    from dmdjax.studies.surface import SurfaceParameters, build_slab

    potential = load_alloy_potential("AlMg_Mendelev2009")
    slab, _ = build_slab(SurfaceParameters())
    positions = slab.positions.astype(dtype)
    nbrs = neighbor_list(positions, slab.cell, potential.cutoff, skin=2.5)
    h = 0.05
    sampler = sd.spin_diffusion_sampler(potential, positions, slab.cell, nbrs, temperature=600.0, kinetic_cutoff=3.5,
                                        mode=mode, epsilon=1.0 / (20 * h), langevin_step=h, candidates=candidates,
                                        minority_sites=n_mg)
    spins = np.ones(slab.n_atoms)
    spins[np.random.default_rng(0).choice(slab.n_atoms, n_mg, replace=False)] = -1.0
    return sampler, jnp.asarray(spins, dtype)


def timed_rate(sampler, spins, n_replicas, dtype, horizon, prng="threefry2x32", repeats=1):
    """Candidates per second of ``n_replicas`` vmapped replicas advanced by ``horizon`` (after a
    compile and warm-up of horizon/10; the fastest of ``repeats``): (rate, events, seconds,
    accepted fraction)."""
    from dmdjax import spin_diffusion as sd

    keys = jax.random.split(jax.random.key(0, impl=prng), n_replicas)
    x0 = jnp.broadcast_to(sampler.reference_positions, (n_replicas,) + sampler.reference_positions.shape)
    states = sd.init_replicas(sampler, keys, x0, jnp.broadcast_to(spins, (n_replicas, spins.shape[0])))
    warm = sd.advance_replicas(sampler, states, jnp.asarray(horizon / 10, dtype))  # compile
    jax.block_until_ready(warm)
    best = None
    for _ in range(repeats):  # the same call from the same state; the fastest counts (shared machines)
        start = time.perf_counter()
        final = sd.advance_replicas(sampler, warm, jnp.asarray(horizon, dtype))
        jax.block_until_ready(final)
        seconds = time.perf_counter() - start
        best = seconds if best is None else min(best, seconds)
    events = int(np.asarray(final.candidates).sum() - np.asarray(warm.candidates).sum())
    accepted = int(np.asarray(final.accepted).sum() - np.asarray(warm.accepted).sum())
    return events / best, events, best, accepted / events


def numpy_rate(mode, n_events, seed=0, check=False):
    """The same algorithm in plain NumPy, one replica, one event at a time. ``check``: first
    assert that its swap energies are dmdjax's on every bond of a random state (untimed)."""
    sampler, lj = build(mode, jnp.float64)
    rng = np.random.default_rng(seed)
    eps = np.asarray(lj.epsilon, float)
    sig = np.asarray(lj.sigma, float)
    cutoff = lj.cutoff
    beta = 1.0 / KT
    x = np.asarray(sampler.reference_positions, float)[:, 0].copy()
    pinned = np.asarray(sampler.pinned)
    bonds = np.asarray(sampler.bonds)
    idx = np.asarray(sampler.neighbor_idx)
    neighbours = [row[row < N_SITES] for row in idx]
    species = (np.arange(N_SITES) >= N_SITES // 2).astype(int)  # 0 = A (σ = +1), 1 = B
    rate = len(bonds) / float(sampler.tau)
    h, epsilon = float(sampler.langevin_step), float(sampler.epsilon)
    noise = rng.normal(size=N_SITES)

    def phi(r, a, b):
        sr6 = (sig[a, b] / r) ** 6
        return np.where(r < cutoff, 4 * eps[a, b] * (sr6 * sr6 - sr6), 0.0)

    def dphi(r, a, b):
        sr6 = (sig[a, b] / r) ** 6
        return np.where(r < cutoff, 4 * eps[a, b] * (-12 * sr6 * sr6 + 6 * sr6) / r, 0.0)

    # "frozen": x never moves, so (like dmdjax) tabulate φ_ab(r_ik) for every listed pair once.
    table = [phi(np.abs(x[k] - x[site])[:, None, None], np.arange(2)[:, None], np.arange(2)[None, :])
             for site, k in enumerate(neighbours)] if mode == "frozen" else None

    def swap_energy(i, j):
        delta = 0.0
        for site, old, new, other in ((i, species[i], species[j], j), (j, species[j], species[i], i)):
            k = neighbours[site]
            keep = k != other
            if table is not None:
                values, others = table[site][keep], species[k[keep]]
                rows = np.arange(len(others))
                delta += np.sum(values[rows, new, others] - values[rows, old, others])
            else:
                r = np.abs(x[k[keep]] - x[site])
                delta += np.sum(phi(r, new, species[k[keep]]) - phi(r, old, species[k[keep]]))
        return delta

    pairs = np.array([(i, j) for i in range(N_SITES) for j in neighbours[i] if j > i])

    if check:  # both codes must run the same model
        start_species = species.copy()
        species[:] = np.random.default_rng(12345).permutation(species)
        spins = jnp.asarray(1.0 - 2.0 * species)
        reference = np.asarray(jax.jit(jax.vmap(lambda i, j: sampler.swap_energy_change(
            sampler.reference_positions, spins, i, j)))(bonds[:, 0], bonds[:, 1]))
        numpy = np.array([swap_energy(i, j) for i, j in bonds])
        if np.max(np.abs(numpy - reference)) > 1e-9:
            bad = int(np.argmax(np.abs(numpy - reference)))
            raise AssertionError(f"NumPy swap energy of bond {bonds[bad].tolist()}: {numpy[bad]} != dmdjax {reference[bad]}")
        species[:] = start_species

    def force():
        i, j = pairs[:, 0], pairs[:, 1]
        d = x[j] - x[i]
        f = dphi(np.abs(d), species[i], species[j]) * np.sign(d)
        out = np.zeros(N_SITES)
        np.add.at(out, i, f)
        np.add.at(out, j, -f)
        return out

    def candidate():
        i, j = bonds[rng.integers(len(bonds))]
        if species[i] != species[j] and rng.random() < 1.0 / (1.0 + np.exp(beta * swap_energy(i, j))):
            species[i], species[j] = species[j], species[i]
            return 1
        return 0

    events, accepted = 0, 0
    start = time.perf_counter()
    if mode == "joint":  # one LM step, then the Poisson(Λ ε h) candidates of its interval
        while events < n_events:
            fresh = rng.normal(size=N_SITES)
            x[:] = np.where(pinned, x, x + h * force() + np.sqrt(h / (2 * beta)) * (noise + fresh))
            noise = fresh
            for _ in range(rng.poisson(rate * epsilon * h)):
                accepted += candidate()
                events += 1
    else:  # x never moves: the interval's Poisson(ΛΔt) candidates, here n_events of them
        for _ in range(n_events):
            accepted += candidate()
        events = n_events
    seconds = time.perf_counter() - start
    return events / seconds, events, seconds, accepted / events


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 1000, 10000])
    parser.add_argument("--modes", nargs="+", default=["frozen", "joint"])
    parser.add_argument("--float32", action="store_true")
    parser.add_argument("--numpy-events", type=int, default=20000)
    parser.add_argument("--candidates-per-replica", type=int, default=500,
                        help="candidates per replica in the timed call (vmapped loops run to the slowest replica: "
                             "the relative spread, and so the waste, shrinks as this grows)")
    parser.add_argument("--prng", default="threefry2x32", choices=["threefry2x32", "rbg", "unsafe_rbg"],
                        help="the replicas' key type (jax.random.key impl): rbg/unsafe_rbg use XLA's bit "
                             "generator, cheaper than threefry on CPU")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repetitions of each measurement (NumPy and dmdjax alike); the fastest counts, "
                             "as timeit does: other processes only ever slow a run down")
    parser.add_argument("--eam", action="store_true",
                        help="instead: the EAM rates on the surface study's 1000-atom Al-Mg slab (2 %% Mg, 600 K), "
                             "frozen and joint, candidates over all bonds and over the Mg sites' bonds")
    parser.add_argument("--eam-replicas", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--json")
    args = parser.parse_args()
    from dmdjax.cli import cpu_compile_flags

    cpu_compile_flags()  # as the command line does (XLA:CPU without fusion emitters, jaxlib 0.9-0.10)
    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float32 if args.float32 else jnp.float64
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), {len(jax.devices())} device(s), "
          f"dtype {jnp.dtype(dtype).name}, {'EAM slab' if args.eam else f'{N_SITES}-site LJ chain'}, "
          f"jax {jax.__version__}")
    rows = []
    if args.eam:
        print("EAM: the 10x5x5-cell slab (1000 atoms, 20 Mg), Mendelev 2009, 600 K; joint: 20 Langevin steps per tau")
        for mode in args.modes:
            for candidates in ("bonds", "minority"):
                sampler, spins = build_eam_slab(mode, candidates, dtype)
                for r in args.eam_replicas:
                    horizon = max(2.0, 4000.0 / r / float(sampler.candidate_rate)) if mode == "frozen" else 2.0
                    rate, events, seconds, fraction = timed_rate(sampler, spins, r, dtype, horizon, args.prng,
                                                                 args.repeats)
                    print(f"{mode:7s} {candidates:8s} R = {r:4d}: {rate:10.4g} candidates/s, {rate * fraction:10.4g} "
                          f"accepted/s ({events} in {seconds:.2f} s, accepted {fraction:.3f})")
                    rows.append({"potential": "eam", "mode": mode, "candidates": candidates, "replicas": r,
                                 "candidates_per_s": rate, "accepted_per_s": rate * fraction,
                                 "accepted_fraction": fraction})
        args.modes = []
    for mode in args.modes:
        runs = [numpy_rate(mode, args.numpy_events, seed, check=seed == 0) for seed in range(args.repeats)]
        reference = max(run[0] for run in runs)
        print(f"{mode:7s} NumPy loop            : {reference:12.4g} candidates/s  (accepted {runs[0][3]:.3f} from "
              f"the segregated start; dmdjax's below: after a warm-up of 1/10 of the run)")
        for r in args.replicas:
            target_events = max(20000, args.candidates_per_replica * r)
            horizon = target_events / r / (N_SITES - 1)  # τ = 1: Λ = 63 candidates per unit time
            rate, events, seconds, fraction = jax_rate(mode, r, dtype, horizon, args.prng, args.repeats)
            print(f"{mode:7s} dmdjax R = {r:6d}      : {rate:12.4g} candidates/s  ({events} in {seconds:.2f} s, "
                  f"accepted {fraction:.3f})  = {rate / reference:8.1f} x NumPy")
            rows.append({"mode": mode, "replicas": r, "prng": args.prng, "candidates_per_s": rate,
                         "numpy_candidates_per_s": reference, "speedup": rate / reference,
                         "accepted_fraction": fraction})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device.device_kind), "platform": device.platform, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
