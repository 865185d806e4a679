"""Atom-sharded VG F + ∇F (issue 26): a run over P fake CPU devices, and memory and communication
on paper from the compiled programs.

Al–6 % Mg mean field (s = 0.88) on an fcc Al slab (a = 4.05 Å, periodic in x and y, free
surfaces in z; ``--repeats`` cubic cells, 4 atoms each), Mendelev 2009 EAM, T = 600 K,
k = 4 eV/Å², the VG neighbour list (cut-off + reach + 0.5 Å skin), atoms in
:func:`dmdjax.domain.spatial_order` (slabs along z).

* ``--run``: time F + ∇F sharded over the first P devices and, with ``--compare``, on one device
  (the largest relative difference of F and ∇F). XLA's ``memory_analysis`` of the compiled
  program for P = 1, 2, 4, ... up to the devices used: arguments, outputs and temporaries per
  device.
* ``--paper``: the same program compiled (not run) for N = 10⁶, 10⁷, 10⁸ and P = 1, 8, 64 from
  shapes alone (the list's slots M taken from the run or ``--slots``): memory per device and the
  bytes each device sends per F + ∇F, summed over the HLO's collectives (``collective-permute``:
  its operand; ``all-reduce``: 2 (P−1)/P × its operand; ``all-gather``: (P−1)/P × its result),
  and, with stated link bandwidths and a stated compute time per atom, the communication
  fraction of a step.

The device count is fixed when JAX starts: the script sets
``XLA_FLAGS=--xla_force_host_platform_device_count=64`` itself unless XLA_FLAGS is given.

    python scripts/scaling.py --run --repeats 50 50 100 --devices 8 --compare --paper --json scaling.json

(50 × 50 × 100 cells are 10⁶ atoms.)
"""

import argparse
import json
import os
import re
import time

if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=64"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

#: Link bandwidths (bytes/s, one direction, per GPU) for the communication estimate: NVLink 4
#: (H100 SXM, 450 GB/s per direction) and one InfiniBand NDR port per GPU (400 Gb/s).
BANDWIDTHS = {"NVLink 4": 450e9, "InfiniBand NDR": 50e9}
#: Per-collective latency assumed in the estimate, s.
LATENCY = {"NVLink 4": 5e-6, "InfiniBand NDR": 10e-6}

_BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "pred": 1, "s64": 8, "u8": 1, "s8": 1, "f16": 2, "bf16": 2}
_SHAPE = re.compile(r"(f64|f32|s32|u32|pred|s64|u8|s8|f16|bf16)\[([0-9,]*)\]")


def _shape_bytes(text: str) -> int:
    total = 0
    for kind, dims in _SHAPE.findall(text):
        total += _BYTES[kind] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
    return total


def communicated_bytes(hlo: str, n_devices: int) -> dict:
    """Bytes one device sends per call, by collective, from the partitioned HLO text."""
    sent = {"collective-permute": 0, "all-reduce": 0, "all-gather": 0, "other": 0}
    for line in hlo.splitlines():
        match = re.match(r"\s*(?:ROOT\s+)?%?[\w.-]+\s*=\s*(.+?)\s+([\w-]+)\(", line)
        if not match:
            continue
        result, op = match.groups()
        if op.endswith("-done"):
            continue
        op = op.removesuffix("-start")
        size = _shape_bytes(result)
        if op == "collective-permute":
            sent[op] += size if not result.startswith("(") else size // 2  # start: (operand, result)
        elif op == "all-reduce":
            sent[op] += int(2 * (n_devices - 1) / n_devices * size)
        elif op == "all-gather":
            sent[op] += int((n_devices - 1) / n_devices * size)
        elif op in ("all-to-all", "reduce-scatter", "collective-broadcast"):
            sent["other"] += size
    return sent


def build(repeats, dtype):
    """The slab (in slabs order), its VG free energy and state (host arrays)."""
    import dmdjax as dj
    from dmdjax import domain

    system = dj.systems.fcc(4.05, tuple(repeats), element="Al", pbc=(True, True, False))
    positions = np.asarray(system.positions)
    positions = positions[domain.spatial_order(positions, system.cell, 1)]
    potential = dj.load_eam("AlMg_Mendelev2009")
    n = positions.shape[0]
    vg = dj.VGFreeEnergy(potential, system.cell, 600.0, n)
    x = jnp.asarray(positions, dtype)
    state = dj.DMDState(x, jnp.full((n,), 4.0, dtype), jnp.full((n,), 0.88, dtype))
    return vg, state


def value_and_grad():
    return jax.jit(jax.value_and_grad(lambda vg, state, nbrs: vg(state, nbrs), argnums=1))


def compiled_stats(vg, state, nbrs, n_devices):
    """Per-device memory of the compiled F + ∇F and the bytes it sends."""
    compiled = value_and_grad().lower(vg, state, nbrs).compile()
    memory = compiled.memory_analysis()
    stats = {"devices": n_devices,
             "argument_bytes": int(memory.argument_size_in_bytes),
             "output_bytes": int(memory.output_size_in_bytes),
             "temporary_bytes": int(memory.temp_size_in_bytes)}
    stats["sent_bytes"] = communicated_bytes(compiled.as_text(), n_devices) if n_devices > 1 else {}
    return stats


def shapes_like(tree, sharding_of):
    """``tree`` with every array replaced by a ShapeDtypeStruct carrying ``sharding_of(array)``."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_of(x))
                        if isinstance(x, jax.Array) else x, tree)


def on_devices(vg, state, nbrs, n_devices, abstract=False, halo=None):
    """(vg, state, nbrs) sharded over the first ``n_devices`` (abstract: shapes only, with
    ``halo`` rows per side; default: from the list)."""
    import dataclasses

    from dmdjax import domain

    if n_devices == 1:
        return vg, state, dataclasses.replace(nbrs, decomposition=None)
    decomposition = domain.decomposition(n_devices)
    n = state.n_sites if hasattr(state, "n_sites") else state.order_parameter.shape[0]
    if abstract:
        if halo is None:
            halo = domain.halo_rows(nbrs, n_devices)
        decomposition = dataclasses.replace(decomposition, halo=halo)

        def sharding_of(x):
            return decomposition.sharding if x.ndim >= 1 and x.shape[0] == n else decomposition.replicated

        tagged = dataclasses.replace(nbrs, decomposition=decomposition)
        return shapes_like(vg, sharding_of), shapes_like(state, sharding_of), shapes_like(tagged, sharding_of)
    tagged = domain.tag(nbrs, decomposition)
    vg, state = domain.shard((vg, state, tagged), decomposition)[:2]
    print(f"{n_devices} devices: halo {tagged.decomposition.halo} rows per side of {n // n_devices}", flush=True)
    return vg, state, tagged


def scaled(vg, state, nbrs, n):
    """Shapes of the same system with N atoms (the list's M kept): for compiling only."""

    def grow(x):
        if isinstance(x, jax.Array) and x.ndim >= 1 and x.shape[0] == state.n_sites:
            return jax.ShapeDtypeStruct((n,) + x.shape[1:], x.dtype)
        return x

    return jax.tree.map(grow, vg), jax.tree.map(grow, state), jax.tree.map(grow, nbrs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, nargs=3, default=(50, 50, 100))
    parser.add_argument("--devices", type=int, default=8, help="devices of the run (default 8)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--run", action="store_true")
    parser.add_argument("--compare", action="store_true", help="also on one device, and the difference")
    parser.add_argument("--paper", action="store_true")
    parser.add_argument("--paper-atoms", type=float, nargs="+", default=(1e6, 1e7, 1e8))
    parser.add_argument("--paper-devices", type=int, nargs="+", default=(1, 8, 16, 64))
    parser.add_argument("--site-seconds", type=float, default=0.28e-6,
                        help="compute time per atom per F + ∇F on one GPU for the estimate, s (default: the "
                        "float32 VG F + ∇F measured on an H100, docs/benchmarks.md)")
    parser.add_argument("--json")
    args = parser.parse_args()

    from dmdjax import domain

    dtype = jnp.dtype(args.dtype)
    out = {"jax": jax.__version__, "backend": jax.default_backend(), "visible_devices": len(jax.devices()),
           "dtype": dtype.name}
    start = time.perf_counter()
    vg, state = build(args.repeats, dtype)
    n = state.n_sites
    nbrs = vg.neighbor_list(state.positions, state.stiffness, skin=0.5)
    out.update(atoms=n, slots=int(nbrs.capacity), list_seconds=time.perf_counter() - start)
    print(f"{n} atoms, list of {nbrs.capacity} slots built in {out['list_seconds']:.1f} s", flush=True)

    if args.run:
        memory = []
        p = 1
        while p <= args.devices:
            if n % p == 0:
                halo = domain.halo_rows(nbrs, p)
                memory.append({**compiled_stats(*on_devices(vg, state, nbrs, p, abstract=True, halo=halo), p),
                               "halo": halo})
                print(json.dumps(memory[-1]), flush=True)
            p *= 2
        out["memory"] = memory
        sharded = on_devices(vg, state, nbrs, args.devices)
        fn = value_and_grad()
        start = time.perf_counter()
        jax.block_until_ready(fn(*sharded))
        out["compile_and_first_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        value, gradient = jax.block_until_ready(fn(*sharded))
        out["sharded_seconds"] = time.perf_counter() - start
        out["free_energy_per_atom"] = float(value) / n
        print(f"sharded over {args.devices}: F/N = {out['free_energy_per_atom']:.6f} eV, "
              f"{out['sharded_seconds']:.1f} s", flush=True)
        if args.compare:
            sharded_gradient = [np.asarray(g) for g in jax.tree.leaves(gradient)]
            del gradient, sharded
            start = time.perf_counter()
            single_value, single_gradient = jax.block_until_ready(fn(*on_devices(vg, state, nbrs, 1)))
            out["single_seconds"] = time.perf_counter() - start
            out["difference_free_energy"] = abs(float(single_value) - float(value)) / abs(float(single_value))
            out["difference_gradient"] = max(
                float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(np.asarray(a))))
                for a, b in zip(jax.tree.leaves(single_gradient), sharded_gradient))
            print(f"one device: {out['single_seconds']:.1f} s; relative differences F "
                  f"{out['difference_free_energy']:.2e}, gradient {out['difference_gradient']:.2e}", flush=True)

    if args.paper:
        # A cube of fcc Al cut into P slabs: feasible while a slab is one search range thick; the
        # halo is the rows within that range of a face, with tag()'s margin.
        density, reach = 4 / 4.05 ** 3, nbrs.search_range
        table = []
        for atoms in args.paper_atoms:
            side = (atoms / density) ** (1 / 3)
            for p in args.paper_devices:
                size = int(round(atoms / p)) * p
                if p > len(jax.devices()):
                    continue
                if side / p < reach:
                    table.append({"devices": p, "atoms": size, "infeasible": f"slabs of {side / p:.1f} A < {reach:.1f} A"})
                    print(json.dumps(table[-1]), flush=True)
                    continue
                halo = min(size // p, int(np.ceil(1.25 * atoms * reach / side)) + 8)
                shapes = scaled(vg, state, nbrs, size)
                try:
                    stats = compiled_stats(*on_devices(*shapes, p, abstract=True, halo=halo), p)
                except Exception as error:  # noqa: BLE001 - report what XLA refuses
                    stats = {"devices": p, "error": f"{type(error).__name__}: {str(error)[:200]}"}
                stats.update(atoms=size, halo=halo if p > 1 else 0, side=side)
                sent = sum(stats.get("sent_bytes", {}).values())
                for link, bandwidth in BANDWIDTHS.items():
                    compute = args.site_seconds * size / p
                    calls = 4 * (p > 1)  # halo exchanges of one F + ∇F (X, a, w; then h)
                    comm = sent / bandwidth + calls * LATENCY[link]
                    stats[f"fraction {link}"] = comm / (comm + compute)
                table.append(stats)
                print(json.dumps(stats), flush=True)
        out["paper"] = table
        out["site_seconds"] = args.site_seconds
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
