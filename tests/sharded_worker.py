"""Worker for tests/test_domain.py: one Al–Mg slab evaluated on one device and sharded over all
visible devices (or, with --process-id, as one of several jax.distributed processes); prints
one JSON line of the largest differences. Run with XLA_FLAGS=--xla_force_host_platform_device_count=P."""

import argparse
import json
import sys
import time

import jax
import jax.experimental.multihost_utils
import jax.numpy as jnp
import numpy as np

#: Relaxation tolerance (eV/Å and eV/(eV/Å²) gradient norm) of the relax and K3 checks.
TOLERANCE = 1e-4


def slab(repeats, seed=0):
    import dmdjax as dj

    system = dj.systems.fcc(4.05, repeats, element="Al", pbc=(True, True, False))
    rng = np.random.default_rng(seed)
    positions = np.asarray(system.positions) + rng.normal(0.0, 0.05, np.shape(system.positions))
    order = dj.domain.spatial_order(positions, system.cell, 8)
    positions = positions[order]
    species = (rng.random(len(positions)) < 0.05).astype(np.int32)
    order_parameter = np.clip(0.9 + 0.05 * rng.standard_normal(len(positions)), -0.99, 0.99)
    return system.cell, positions, species, order_parameter


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, nargs=3, default=(10, 10, 25))
    parser.add_argument("--checks", default="energy,free_energy")
    parser.add_argument("--coordinator")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--process-id", type=int)
    args = parser.parse_args()
    if args.coordinator:
        jax.distributed.initialize(args.coordinator, args.processes, args.process_id)
    jax.config.update("jax_enable_x64", True)
    import dmdjax as dj
    from dmdjax import domain

    potential = dj.load_eam("AlMg_Mendelev2009")
    cell, positions, species, s = slab(tuple(args.repeats))
    positions, species, s = jnp.asarray(positions), jnp.asarray(species), jnp.asarray(s)
    decomposition = domain.decomposition()
    out = {"devices": decomposition.n_shards, "processes": jax.process_count(), "n": int(positions.shape[0])}
    checks = args.checks.split(",")
    clock = [time.perf_counter()]
    out["seconds"] = {}

    def lap(name):
        """Wall seconds of each phase since the previous one (compilation included)."""
        now = time.perf_counter()
        out["seconds"][name] = round(now - clock[0], 1)
        clock[0] = now
        print(f"{name}: {out['seconds'][name]} s", file=sys.stderr, flush=True)

    def gathered(x):
        return np.asarray(jax.experimental.multihost_utils.process_allgather(x, tiled=True))

    def compare(name, single, sharded):
        """The largest difference over the leaves, each relative to its largest magnitude."""
        differences = [float(np.max(np.abs(np.asarray(a) - gathered(b))) / max(1e-300, np.max(np.abs(np.asarray(a)))))
                       for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded))]
        out[name] = max(differences)
        out[name + "_leaves"] = differences

    if "energy" in checks:
        nbrs = dj.neighbor_list(positions, cell, potential.cutoff, skin=0.5)
        single = dj.energy.evaluate_arrays(potential, positions, species, cell, nbrs)
        sharded_nbrs = domain.tag(nbrs, decomposition)
        x, z = domain.shard((positions, species, sharded_nbrs), decomposition)[:2]
        start = time.perf_counter()
        sharded = dj.energy.evaluate_arrays(potential, x, z, cell, sharded_nbrs)
        out["energy_seconds"] = time.perf_counter() - start
        compare("energy", (single.energy, single.forces), (sharded.energy, sharded.forces))
        # The list searched again inside jit: each device its own rows among the gathered positions.
        moved = positions + 0.3 * jnp.sin(positions[:, ::-1])
        update = jax.jit(lambda nl, x: nl.update(x, trigger=0.0))
        single_list, sharded_list = update(nbrs, moved), update(sharded_nbrs, domain.shard(moved, decomposition,
                                                                                          n=moved.shape[0]))
        out["update_differs"] = int(np.sum(np.asarray(single_list.idx) != gathered(sharded_list.idx)))
        out["update_overflow"] = [bool(single_list.overflow), bool(sharded_list.overflow)]
        lap("energy")
    if {"free_energy", "relax", "k3"} & set(checks):
        vg = dj.VGFreeEnergy(potential, cell, 600.0, positions.shape[0])
        nbrs = vg.neighbor_list(positions, skin=0.5)
        state = vg.initial_state(positions, s, nbrs)
        sharded_nbrs = domain.tag(nbrs, decomposition)
        sharded_state, sharded_vg = domain.shard((state, vg, sharded_nbrs), decomposition)[:2]
        value_and_grad = jax.jit(jax.value_and_grad(lambda v, st, nl: v(st, nl), argnums=1))
        if "free_energy" in checks:
            single = value_and_grad(vg, state, nbrs)
            start = time.perf_counter()
            sharded = value_and_grad(sharded_vg, sharded_state, sharded_nbrs)
            jax.block_until_ready(sharded)
            out["free_energy_seconds"] = time.perf_counter() - start
            compare("free_energy", single, sharded)
            lap("free_energy")
        if {"relax", "k3"} & set(checks):  # (X, k) relaxed at fixed s: L-BFGS over sharded vectors
            single = dj.relax(vg, state, nbrs, tolerance=TOLERANCE, max_steps=400)
            lap("relax_single")
            if "relax" in checks:
                sharded = dj.relax(sharded_vg, sharded_state, sharded_nbrs, tolerance=TOLERANCE, max_steps=400)
                out["relax_iterations"] = [int(single.iterations), int(sharded.iterations)]
                compare("relax", (single.free_energy, single.state), (sharded.free_energy, sharded.state))
                lap("relax_sharded")
        if "k3" in checks:  # a short master-equation run from the relaxed state
            law = dj.dmd.MasterEquation(1.0, 0.0)
            times = np.array([0.0, 0.02])
            options = dict(kinetic_cutoff=3.5, rtol=1e-6, atol=1e-8, tolerance=TOLERANCE, relax_at="interval")
            start, start_nbrs = single.state, single.neighbors
            runs = [dj.dmd.run(vg, start, start_nbrs, law, times, **options)]
            lap("k3_single")
            start, start_nbrs = domain.shard((start, start_nbrs), decomposition)
            runs.append(dj.dmd.run(sharded_vg, start, start_nbrs, law, times, **options))
            out["k3_change"] = float(np.max(np.abs(np.asarray(runs[0].order_parameter[-1] - runs[0].order_parameter[0]))))
            compare("k3", (runs[0].state, runs[0].free_energy), (runs[1].state, runs[1].free_energy))
            lap("k3_sharded")
            # The pure driver on the sharded state: one solve over the same interval, against the host loop on
            # one device (dmd.run and dmd.solve share the interval function: the same trajectory to 1e-12,
            # tests/test_dmd.py), so that no second single-device integration is needed.
            graph = dj.kinetics.bond_graph(start.positions, sharded_vg.cell, start_nbrs, 3.5)
            solution = dj.dmd.solve(sharded_vg, start, start_nbrs, law, graph, times, rtol=1e-6, atol=1e-8,
                                    tolerance=TOLERANCE, relax_at="interval")
            assert runs[0].neighbor_builds == (), "a list rebuild inside dmd.run: solve would see another list"
            compare("solve", runs[0].state, solution.state)
            lap("solve_sharded")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
