"""Benchmark: EAM forces, dmdjax vs jax-md, and dmdjax's VG F + ∇F, in ns per atom, one run, one device.

Pure fcc Al (a = 4.05 Å) with the Al–Al part of the Mendelev 2009 EAM (cut-off 7.5 Å), the
same structure, tables and cut-off for every column:

* dmdjax plain EAM energy + forces (``jax.value_and_grad`` of ``dmdjax.potential_energy``,
  Dense neighbour list, skin 0.5 Å);
* dmdjax VG free energy F + ∇F with respect to (X, k, s) (Gauss–Hermite m = 8, the default
  rule), at s = +1, k = 4 eV/Å²;
* jax-md's EAM energy + forces (``jax_md.energy.eam_neighbor_list`` built from the same tables
  with ``jax_md.interpolate.spline``, as jax-md's own LAMMPS reader does), Dense and Sparse
  neighbour formats, the same skin.

Each time is the median of ``--trials`` calls after the compile. The first size also prints
the relative difference of the energies (the spline interpolants differ slightly).

    python scripts/bench_eam.py [--repeats 14 20] [--dtype float32] [--skip vg sparse] [--json out.json]
"""

import argparse
import json
import platform

import jax
from bench_free_energy import median_seconds  # scripts/ is on sys.path when a script runs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, nargs="+", default=[14, 20], help="cubic cells per side (4 atoms each)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=["plain", "vg", "dense", "sparse"])
    parser.add_argument("--json")
    args = parser.parse_args()
    from dmdjax.cli import cpu_compile_flags

    cpu_compile_flags()
    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    from ase.build import bulk
    from ase.calculators.eam import EAM as AseEAM
    from jax_md import energy, interpolate, partition, space

    import dmdjax as dj

    dtype = jnp.dtype(args.dtype)
    path = str(dj.potentials.resolve_potential_path("AlMg_Mendelev2009"))
    tables = AseEAM(potential=path, form="fs")
    al = list(tables.elements).index("Al")
    potential = dj.potentials.eam_from_tables(
        ["Al"], tables.dr, tables.drho, tables.cutoff, tables.rphi_data[al:al + 1, al:al + 1],
        tables.density_data[al:al + 1, al:al + 1], tables.embedded_data[al:al + 1], form="fs", source=path)
    cutoff, skin = float(potential.cutoff), 0.5

    def jax_md_functions():
        rphi = interpolate.spline(jnp.asarray(tables.rphi_data[al, al], dtype), tables.dr)
        charge = interpolate.spline(jnp.asarray(tables.density_data[al, al], dtype), tables.dr)
        embedding = interpolate.spline(jnp.asarray(tables.embedded_data[al], dtype), tables.drho)
        # jax-md's EAM lists every atom as its own neighbour (mask_self=False) and sums charge_fn
        # over the list: the density must vanish at d = 0, or ρ_i gets the table's ρ(0).
        inside = lambda d: (d > 0) & (d < cutoff)
        return (lambda d: jnp.where(inside(d), charge(d), 0.0), embedding,
                lambda d: jnp.where(inside(d), rphi(d) / jnp.where(inside(d), d, 1.0), 0.0))

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, {args.dtype}, "
          f"host {platform.processor() or platform.machine()}; fcc Al, Mendelev 2009 Al-Al, cut-off {cutoff:.2f} Å")

    def timed(fn, *fn_args):
        return median_seconds(fn, *fn_args, trials=args.trials)

    columns = [c for c in ("plain", "vg", "dense", "sparse") if c not in args.skip]
    names = {"plain": "dmdjax E+F", "vg": "dmdjax VG F+∇F", "dense": "jax-md Dense E+F", "sparse": "jax-md Sparse E+F"}
    print(f"{'atoms':>9s} " + " ".join(f"{names[c] + ' ns/atom':>26s}" for c in columns))
    rows = []
    for index, repeats in enumerate(args.repeats):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((repeats,) * 3)
        system = dj.from_ase(atoms, species_names=["Al"])
        positions = system.positions.astype(dtype)
        n = system.n_atoms
        row, energies = {"atoms": n}, {}
        nbrs = dj.neighbor_list(positions, system.cell, cutoff, skin=skin)
        if "plain" in columns:
            plain = jax.jit(jax.value_and_grad(lambda x: dj.potential_energy(potential, x, system.species, system.cell,
                                                                             nbrs)))
            row["plain"] = timed(plain, positions) / n * 1e9
            energies["dmdjax"] = float(plain(positions)[0])
        if "vg" in columns:
            vg = dj.VGFreeEnergy(potential, system.cell, 300.0, n)
            vg_fn = jax.jit(jax.value_and_grad(lambda x, k, s: vg(dj.DMDState(x, k, s), nbrs), argnums=(0, 1, 2)))
            try:
                row["vg"] = timed(vg_fn, positions, jnp.full((n,), 4.0, dtype), jnp.ones((n,), dtype)) / n * 1e9
            except Exception as err:  # out of memory at the largest sizes
                print(f"  VG: failed ({type(err).__name__}: {str(err)[:100]})")
                row["vg"] = None
        box = float(atoms.cell[0, 0])
        displacement, _ = space.periodic(box)
        charge_fn, embedding_fn, pair_fn = jax_md_functions()
        for fmt in ("dense", "sparse"):
            if fmt not in columns:
                continue
            neighbor_fn, energy_fn = energy.eam_neighbor_list(
                displacement, box, charge_fn, embedding_fn, pair_fn, cutoff, dr_threshold=skin,
                fractional_coordinates=False,
                format=partition.Dense if fmt == "dense" else partition.Sparse)
            try:
                neighbors = neighbor_fn.allocate(positions)
                fn = jax.jit(jax.value_and_grad(lambda x, nb: energy_fn(x, nb)))
                row[fmt] = timed(fn, positions, neighbors) / n * 1e9
                energies[f"jax-md {fmt}"] = float(fn(positions, neighbors)[0])
            except Exception as err:  # e.g. int32 overflow of the Sparse list at 10⁶ atoms, out of memory
                print(f"  jax-md {fmt}: failed ({type(err).__name__}: {str(err)[:100]})")
                row[fmt] = None
        print(f"{n:9d} " + " ".join(f"{row[c]:26.1f}" if row.get(c) is not None else f"{'—':>26s}" for c in columns))
        if index == 0 and "dmdjax" in energies:
            for name, value in energies.items():
                if name != "dmdjax":
                    print(f"  energy per atom: dmdjax {energies['dmdjax'] / n:.6f} eV, {name} {value / n:.6f} eV "
                          f"(relative difference {abs(value / energies['dmdjax'] - 1):.1e})")
        row["energy_per_atom"] = {k: v / n for k, v in energies.items()}
        rows.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device.device_kind), "platform": device.platform, "dtype": args.dtype,
                       "jax": jax.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
