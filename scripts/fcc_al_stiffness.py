"""Relaxed VG stiffness and mean-square displacement of fcc Al (Mendelev 2009) vs the Einstein estimate.

Writes docs/relaxation.md. Usage: python scripts/fcc_al_stiffness.py [--repeats 5] [--out docs/relaxation.md]
"""

import argparse
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402

import dmdjax as dj  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5,
                        help="cubic cells per side (5: the smallest cell that holds the VG range at 600 K)")
    parser.add_argument("--lattice-constant", type=float, default=4.05)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[100.0, 300.0, 600.0])
    parser.add_argument("--out", default="docs/relaxation.md")
    args = parser.parse_args()
    potential = dj.load_eam("AlMg_Mendelev2009")
    system = dj.systems.fcc(args.lattice_constant, (args.repeats,) * 3).with_species_names(potential.species)
    n = system.n_atoms
    s = jnp.full(n, 0.999)  # pure Al up to 0.05 % Mg
    rows = []
    for temperature in args.temperatures:
        vg = dj.VGFreeEnergy(potential, system.cell, temperature, n)
        nbrs = vg.neighbor_list(system.positions, skin=0.5)  # the cut-off plus the Gaussians' reach
        einstein = float(jnp.mean(dj.initial_stiffness(vg, system.positions, s, nbrs)))
        start = time.perf_counter()
        result = dj.relax(vg, vg.initial_state(system.positions, s, nbrs), nbrs)
        elapsed = time.perf_counter() - start
        k = float(jnp.mean(result.stiffness))
        kt = dj.BOLTZMANN_EV_PER_K * temperature
        rows.append((temperature, k, einstein, 3 * kt / k, 3 * kt / einstein, int(result.iterations),
                     float(result.gradient_norm), elapsed))
        print(f"T={temperature:6.1f} K  k={k:.4f}  k_E={einstein:.4f} eV/Å²  MSD={3 * kt / k:.5f} Å²  "
              f"({int(result.iterations)} it, {elapsed:.1f} s)")
    lines = [
        "# Relaxed VG stiffness of fcc Al",
        "",
        f"Mendelev 2009 Al–Mg EAM (`AlMg_Mendelev2009`), fcc Al, a = {args.lattice_constant} Å (fixed cell), "
        f"{n} atoms, s = 0.999, Gauss–Hermite m = 8, float64; `python scripts/fcc_al_stiffness.py`.",
        "",
        "k is the relaxed Gaussian stiffness, k_E = tr ∇²_ii V / 3 at the perfect lattice (the Einstein / "
        "harmonic estimate that seeds the relaxation), MSD = ⟨|x − X|²⟩ = 3 k_B T / k.",
        "",
        "| T (K) | k (eV/Å²) | k_E (eV/Å²) | MSD VG (Å²) | MSD Einstein (Å²) | L-BFGS iterations | final max grad | wall (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append("| {:.0f} | {:.4f} | {:.4f} | {:.5f} | {:.5f} | {} | {:.1e} | {:.1f} |".format(*row))
    lines += [
        "",
        "At fixed volume the Gaussian average of the curvature of the repulsive core makes the VG stiffness "
        "larger than the harmonic one, and more so as T grows (k rises with T); the VG MSD is therefore "
        "below the Einstein estimate. Both are single-site (mean-field) estimates: the true harmonic MSD, "
        "k_B T ⟨1/ω²⟩ summed over phonons, is larger than 3 k_B T/k_E. For comparison, the measured "
        "Debye–Waller factor of Al near room temperature, B ≈ 0.85 Å², corresponds to a 3-D MSD of "
        "3B/(8π²) ≈ 0.032 Å².",
    ]
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
