"""Is the backward pass of the neighbour gather worth replacing? (the Al–Mg-in-3-D issue's hot path)

The forces and ∇F of dmdjax gather neighbour values through a Dense list, ``values[idx]``
(N, M); autodiff transposes that gather into a scatter-add. A Dense list built from distances
is symmetric, so every slot (i, m) with j = idx[i, m] has a reverse slot (j, m') with
idx[j, m'] = i, and the transpose can be written as a gather instead:
grad[k] = Σ_m' cot[reverse[k, m']]. This script times, on one device and in one run, a
pair-sum energy of an fcc crystal (sin of the squared pair distances, every listed pair) — its
value, its gradient by autodiff (scatter-add), and its gradient with the reverse-slot gather
in a ``jax.custom_vjp`` — and checks that both gradients agree. The reverse table costs one
sort per neighbour-list build (timed separately).

    python scripts/bench_gather_vjp.py --repeats 8 14 20 [--dtype float32]
"""

from __future__ import annotations

import argparse
import json

from bench_free_energy import median_seconds  # scripts/ is on sys.path when a script runs
from dmdjax.cli import cpu_compile_flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, nargs="+", default=[8, 14], help="fcc cells per side")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--calls", type=int, default=5, help="timed calls per measurement (their median)")
    args = parser.parse_args()
    cpu_compile_flags()  # as the command line does: before JAX's backend starts
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from dmdjax.neighbors import neighbor_list
    from dmdjax.systems import fcc

    def reverse_slots(idx):
        """For each slot (i, m) the flat index of the slot (j, m') holding i; ``found`` marks valid ones."""
        n, m = idx.shape
        row = jnp.broadcast_to(jnp.arange(n)[:, None], idx.shape)
        valid = idx < n
        sentinel = (n + 1) * (n + 1)
        keys = jnp.where(valid, row * (n + 1) + idx, sentinel).reshape(-1)
        order = jnp.argsort(keys)
        sorted_keys = keys[order]
        target = jnp.where(valid, idx * (n + 1) + row, sentinel).reshape(-1)
        position = jnp.clip(jnp.searchsorted(sorted_keys, target), 0, keys.size - 1)
        found = (sorted_keys[position] == target) & valid.reshape(-1)
        return jnp.where(found, order[position], 0).reshape(n, m), found.reshape(n, m)

    @jax.custom_vjp
    def gather(values, idx, reverse, found):
        return jnp.concatenate([values, jnp.zeros((1,) + values.shape[1:], values.dtype)])[idx]

    def gather_forward(values, idx, reverse, found):
        return gather(values, idx, reverse, found), (reverse, found)

    def gather_backward(residual, cotangent):
        reverse, found = residual
        flat = cotangent.reshape((-1,) + cotangent.shape[2:])
        picked = flat[reverse.reshape(-1)].reshape(cotangent.shape)
        mask = found.reshape(found.shape + (1,) * (cotangent.ndim - 2))
        return jnp.sum(jnp.where(mask, picked, 0), axis=1), None, None, None

    gather.defvjp(gather_forward, gather_backward)

    def timed(function, x):
        return median_seconds(function, x, trials=args.calls)

    device = jax.devices()[0]
    print(f"# {device.device_kind} ({device.platform}), jax {jax.__version__}, {args.dtype}; ns per atom, median of "
          f"{args.calls}")
    print("| atoms | slots/atom | value | grad, autodiff (scatter-add) | grad, reverse-slot gather | ratio | "
          "reverse table (once per list) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for repeat in args.repeats:
        crystal = fcc(4.05, (repeat,) * 3, "Al")
        positions = crystal.positions.astype(args.dtype)
        n = crystal.n_atoms
        idx = neighbor_list(positions, crystal.cell, 7.5, skin=0.5).idx
        build = jax.jit(reverse_slots)
        table_time = timed(build, idx)
        reverse, found = build(idx)
        if bool(jnp.any((idx < n) & ~found)):
            raise RuntimeError("the neighbour list is not symmetric")
        mask = idx < n

        def energy(x, gathered):
            difference = gathered - x[:, None]
            return jnp.sum(jnp.where(mask, jnp.sin(jnp.sum(difference * difference, axis=-1)), 0.0))

        def plain(x):
            return energy(x, jnp.concatenate([x, jnp.zeros((1, 3), x.dtype)])[idx])

        def reversed_(x):
            return energy(x, gather(x, idx, reverse, found))

        value, autodiff, custom = jax.jit(plain), jax.jit(jax.grad(plain)), jax.jit(jax.grad(reversed_))
        error = float(jnp.max(jnp.abs(autodiff(positions) - custom(positions))) / jnp.max(jnp.abs(autodiff(positions))))
        row = {"atoms": n, "slots": int(idx.shape[1]), "value": timed(value, positions) / n * 1e9,
               "autodiff": timed(autodiff, positions) / n * 1e9, "reverse": timed(custom, positions) / n * 1e9,
               "table": table_time / n * 1e9, "relative_difference": error}
        rows.append(row)
        print(f"| {n} | {row['slots']} | {row['value']:.0f} | {row['autodiff']:.0f} | {row['reverse']:.0f} | "
              f"{row['autodiff'] / row['reverse']:.2f} | {row['table']:.0f} |  (gradients differ by {error:.1e})")
    print(json.dumps({"device": device.device_kind, "dtype": args.dtype, "rows": rows}))


if __name__ == "__main__":
    main()
