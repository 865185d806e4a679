"""Memory of a differentiated DMD run vs its number of steps (diffrax's RecursiveCheckpointAdjoint).

Compiles ``jax.grad`` of a loss on :func:`dmdjax.dmd.solve` — K2 on the chain study's N-site
chain, fixed Tsit5 steps of 0.25 τ, Newton relaxations, ``max_steps`` = n — for n steps and
reads XLA's accounting of the compiled program (``memory_analysis()``: its temporary buffers,
which hold what the backward pass keeps) for three settings of diffrax's
``RecursiveCheckpointAdjoint``:

* ``checkpoints=n`` ("all"): the loop state after every step is stored: memory grows ∝ n;
* ``checkpoints=None`` (dmd.solve's default): equinox picks ≈ √(2 max_steps) checkpoints and
  recomputes the steps between them in the backward pass: memory ∝ √max_steps;
* ``checkpoints=C``: at most C checkpoints: memory bounded whatever n, more recomputation.

Memory is read from the compiled program (no run needed); ``--time`` also times one gradient.

    python scripts/adjoint_memory.py [--steps 64 256 1024 4096] [--checkpoints 16] [--n-sites 64] [--time]
"""

from __future__ import annotations

import argparse
import json
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--checkpoints", type=int, default=16)
    parser.add_argument("--n-sites", type=int, default=64)
    parser.add_argument("--time", action="store_true", help="also time one gradient (slow for many steps)")
    parser.add_argument("--json")
    args = parser.parse_args()
    from dmdjax.cli import cpu_compile_flags

    cpu_compile_flags()
    import diffrax
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    from dmdjax import dmd
    from dmdjax.studies import chain

    p = chain.ChainParameters()
    model = chain.chain_model(p, args.n_sites)
    vg, nbrs = model.vg, model.neighbors
    setup = chain.solve_setup(p, model)
    dt = 0.25
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}), N = {args.n_sites}, K2, fixed steps dt = {dt} τ, "
          f"jax {jax.__version__}")
    print(f"{'steps':>6s} {'adjoint':>16s} {'temp memory (MB)':>17s} {'grad time (s)':>14s}")
    rows = []
    for n in args.steps:
        times = jnp.linspace(0.0, n * dt, 5)
        for checkpoints in (n, None, args.checkpoints):
            def loss(tau, checkpoints=checkpoints, n=n, times=times):
                solution = dmd.solve(vg, setup.state, nbrs, dmd.SpinDiffusion(tau), setup.graph, times,
                                     stepsize_controller=diffrax.ConstantStepSize(), dt0=dt, max_steps=n,
                                     tolerance=1e-10, relax_method="newton", colouring=setup.colouring,
                                     adjoint=diffrax.RecursiveCheckpointAdjoint(checkpoints))
                return jnp.sum(solution.order_parameter[-1] ** 2)

            compiled = jax.jit(jax.grad(loss)).lower(jnp.asarray(p.tau)).compile()
            memory = compiled.memory_analysis()
            temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
            seconds = float("nan")
            if args.time:
                jax.block_until_ready(compiled(jnp.asarray(p.tau)))
                tick = time.perf_counter()
                jax.block_until_ready(compiled(jnp.asarray(p.tau)))
                seconds = time.perf_counter() - tick
            name = {n: "all steps", None: "default"}.get(checkpoints, f"{checkpoints} checkpoints")
            mb = float("nan") if temp is None else temp / 1e6
            print(f"{n:6d} {name:>16s} {mb:17.3f} {seconds:14.3f}", flush=True)
            rows.append({"steps": n, "checkpoints": checkpoints, "temp_bytes": temp, "seconds": seconds})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device.device_kind), "n_sites": args.n_sites, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
