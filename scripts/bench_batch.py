"""Benchmark: throughput of batched DMD runs (``jax.vmap`` of :func:`dmdjax.dmd.solve`) vs batch size.

The chain study's N-site chain (default 16), K2 (exact swap rates), B temperatures spread by
±20 % around 580 K (k_BT = 0.05 eV), t = 0..20 τ with fixed steps, Newton relaxations; every
batch size is timed after its compile, best of ``--repeats``. Prints runs per second and the
speed-up over B = 1.

    python scripts/bench_batch.py [--batch 1 4 16 64] [--n-sites 16] [--repeats 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--n-sites", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    from dmdjax.cli import cpu_compile_flags

    cpu_compile_flags()
    import diffrax
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from dmdjax import dmd
    from dmdjax.studies import chain

    p = chain.ChainParameters()
    model = chain.chain_model(p, args.n_sites)
    vg, nbrs = model.vg, model.neighbors
    setup = chain.solve_setup(p, model)
    times = jnp.linspace(0.0, 20.0, 5)

    def final(temperature):
        solution = dmd.solve(eqx.tree_at(lambda v: v.temperature, vg, temperature), setup.state, nbrs,
                             dmd.SpinDiffusion(p.tau), setup.graph, times,
                             stepsize_controller=diffrax.ConstantStepSize(), dt0=0.25, tolerance=1e-8,
                             relax_method="newton", colouring=setup.colouring)
        return solution.order_parameter[-1], solution.ok

    batched = eqx.filter_jit(jax.vmap(final))
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), N = {args.n_sites}, 80 fixed Tsit5 steps per run, "
          f"jax {jax.__version__}")
    rows, single = [], None
    for b in args.batch:
        temperatures = float(vg.temperature) * jnp.linspace(0.8, 1.2, b)
        jax.block_until_ready(batched(temperatures))  # compile
        best = None
        for _ in range(args.repeats):
            tick = time.perf_counter()
            s, ok = batched(temperatures)
            jax.block_until_ready(s)
            best = min(best or float("inf"), time.perf_counter() - tick)
        assert bool(jnp.all(ok))
        rate = b / best
        single = rate if single is None else single
        print(f"B = {b:5d}: {best:8.3f} s per call, {rate:9.2f} runs/s, {rate / single:6.1f} x B = {args.batch[0]}")
        rows.append({"batch": b, "seconds": best, "runs_per_s": rate})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device.device_kind), "n_sites": args.n_sites, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
