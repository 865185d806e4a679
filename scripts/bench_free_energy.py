"""Benchmark: VG free energy F + ∇F (X, k, s) against the plain EAM energy + forces.

fcc Al–6 at.% Mg with the Mendelev 2009 EAM (7.5 Å cut-off), Dense neighbour lists, side by side
in one run on one device. Prints a table (ns/atom, ratio) and writes JSON with --json.

    python scripts/bench_free_energy.py --repeats 6 14 29 --dtype float32
"""

import argparse
import json
import platform
import time

import jax


def median_seconds(fn, *fn_args, trials=5):
    """Median wall time of ``fn(*fn_args)`` over ``trials`` calls after a first (compiling) one, s."""
    import numpy as np

    jax.block_until_ready(fn(*fn_args))  # compile
    times = []
    for _ in range(trials):
        start = time.perf_counter()
        jax.block_until_ready(fn(*fn_args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, nargs="+", default=[6, 14], help="cubic cells per side")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--rules", nargs="+", default=["gauss-hermite:8", "third-degree"])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np

    import dmdjax as dj

    potential = dj.load_eam("AlMg_Mendelev2009")
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, {args.dtype}, "
          f"host {platform.processor() or platform.machine()}")
    results = []

    def timed(fn, *fn_args):
        return median_seconds(fn, *fn_args, trials=args.trials)

    header = f"{'atoms':>8} {'plain E+F ns/atom':>18}"
    for rule in args.rules:
        header += f" {'VG ' + rule + ' ns/atom':>26} {'ratio':>6}"
    print(header)
    for repeats in args.repeats:
        rng = np.random.default_rng(0)
        atoms = __import__("ase.build", fromlist=["bulk"]).bulk("Al", "fcc", a=4.05, cubic=True).repeat((repeats,) * 3)
        symbols = np.array(atoms.get_chemical_symbols(), dtype=object)
        symbols[rng.random(len(atoms)) < 0.06] = "Mg"
        atoms.set_chemical_symbols(symbols.tolist())
        system = dj.from_ase(atoms, species_names=potential.species)
        dtype = jnp.float32 if args.dtype == "float32" else jnp.float64
        positions = system.positions.astype(dtype)
        n = system.n_atoms
        nbrs = dj.neighbor_list(positions, system.cell, potential.cutoff, skin=0.5)
        plain = jax.jit(jax.value_and_grad(
            lambda x: dj.potential_energy(potential, x, system.species, system.cell, nbrs)))
        t_plain = timed(plain, positions)
        row = {"atoms": n, "neighbors_per_atom": int(nbrs.capacity), "plain_ns_per_atom": 1e9 * t_plain / n}
        line = f"{n:>8} {1e9 * t_plain / n:>18.1f}"
        s = jnp.where(system.species == 0, 0.9, -0.9).astype(dtype)
        k = jnp.full((n,), 4.0, dtype)
        for rule in args.rules:
            name, _, nodes = rule.partition(":")
            vg = dj.VGFreeEnergy(potential, system.cell, 300.0, n, quadrature=name, nodes=int(nodes or 8))
            vg_fn = jax.jit(jax.value_and_grad(lambda x, k, s: vg(dj.DMDState(x, k, s), nbrs), argnums=(0, 1, 2)))
            try:
                t_vg = timed(vg_fn, positions, k, s)
            except Exception as err:  # out of memory at the largest sizes
                print(f"  {rule}: failed ({type(err).__name__}: {str(err)[:80]})")
                row[rule] = None
                continue
            row[rule] = {"ns_per_atom": 1e9 * t_vg / n, "ratio_to_plain": t_vg / t_plain}
            line += f" {1e9 * t_vg / n:>26.1f} {t_vg / t_plain:>6.1f}"
        print(line)
        results.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device.device_kind), "platform": device.platform, "dtype": args.dtype,
                       "jax": jax.__version__, "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
