"""Benchmark: candidate exchange events per second of the spin-diffusion sampler.

A 64-site Lennard-Jones chain (the chain study's potential), R replicas in one jitted,
vmapped loop, against a plain NumPy implementation of the same algorithm (uniformised
Kawasaki exchange with local swap energies, a Poisson number of candidates per interval in
which x is held; in "joint" mode one Leimkuhler–Matthews step per candidate on average)
written here for the comparison. NumPy runs replicas one after another, so
its rate does not depend on R: it is measured once per mode.

    python scripts/bench_sampler.py [--replicas 1 1000 10000] [--candidates-per-replica 500] [--float32]
                                    [--repeats 3] [--prng threefry2x32|rbg|unsafe_rbg] [--json out.json]
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
    from dmdjax import spin_diffusion as sd

    sampler, _ = build(mode, dtype)
    spins = jnp.where(jnp.arange(N_SITES) < N_SITES // 2, 1.0, -1.0).astype(dtype)
    keys = jax.random.split(jax.random.key(0, impl=prng), n_replicas)
    x0 = jnp.broadcast_to(sampler.reference_positions, (n_replicas,) + sampler.reference_positions.shape)
    states = sd.init_replicas(sampler, keys, x0, jnp.broadcast_to(spins, (n_replicas, N_SITES)))
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
    parser.add_argument("--json")
    args = parser.parse_args()
    from dmdjax.cli import cpu_compile_flags

    cpu_compile_flags()  # as the command line does (XLA:CPU without fusion emitters, jaxlib 0.9-0.10)
    if not args.float32:
        jax.config.update("jax_enable_x64", True)
    dtype = jnp.float32 if args.float32 else jnp.float64
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), {len(jax.devices())} device(s), "
          f"dtype {jnp.dtype(dtype).name}, {N_SITES}-site LJ chain, jax {jax.__version__}")
    rows = []
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
