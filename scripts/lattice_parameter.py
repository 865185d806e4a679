"""The VG lattice parameter of fcc Al (Mendelev 2009 EAM) from 0 to 900 K against classical MD.

VG: ``dmdjax.ase.FreeEnergyCalculator`` on the 4-atom cubic cell (replicated inside), the
cell relaxed by ASE's BFGS on ``FrechetCellFilter`` to zero free-energy pressure (|σ_F| <
1e-4 GPa). MD: Langevin dynamics (BAOAB, in one compiled ``lax.scan``) of 500 atoms at three
lattice constants around the VG value; the virial + kinetic pressure, averaged, interpolated
linearly to P = 0. Both classical: the same statistics, so the difference is the VG
(Gaussian, independent-site) approximation.

Writes ``docs/lattice_parameter.md`` (table) and ``docs/figures/lattice_parameter.png``.
Usage: python scripts/lattice_parameter.py [--steps 6000] [--temperatures 100 300 600 900]
"""

import argparse
import time
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
import ase.build  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from ase.filters import FrechetCellFilter  # noqa: E402
from ase.optimize import BFGS  # noqa: E402

import dmdjax as dj  # noqa: E402
from dmdjax.ase import EAMCalculator, FreeEnergyCalculator  # noqa: E402
from dmdjax.energy import evaluate_arrays  # noqa: E402

POTENTIAL = "AlMg_Mendelev2009"
GPA_PER_EV_A3 = 160.21766208
AMU_EV_FS2_PER_A2 = dj.units.AMU_EV_FS2_PER_A2


def vg_lattice_parameter(temperature: float) -> tuple[float, float]:
    """(a, max |σ| in GPa) at zero free-energy pressure (plain EAM at T = 0)."""
    atoms = ase.build.bulk("Al", "fcc", a=4.05, cubic=True)
    atoms.calc = (EAMCalculator(POTENTIAL) if temperature == 0 else
                  FreeEnergyCalculator(POTENTIAL, temperature, tolerance=1e-10, reach=1.0))
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-7, steps=200)
    return float(atoms.cell.lengths()[0]), float(np.abs(atoms.get_stress()).max() * GPA_PER_EV_A3)


def md_pressure(potential, lattice_constant: float, temperature: float, steps: int, key, repeats=5,
                timestep=2.0, friction=0.01, sample_every=10, skin=1.0) -> tuple[float, float, float]:
    """Mean pressure (GPa), its standard error, and the mean kinetic temperature (K) of NVT
    Langevin MD of fcc Al at ``lattice_constant``; the first quarter of ``steps`` is discarded."""
    system = dj.systems.fcc(lattice_constant, (repeats,) * 3).with_species_names(potential.species)
    n, cell, species = system.n_atoms, system.cell, system.species
    neighbors = dj.neighbor_list(system.positions, cell, potential.cutoff, skin=skin)
    mass = potential.masses[0] * AMU_EV_FS2_PER_A2  # eV fs²/Å²
    kt = dj.BOLTZMANN_EV_PER_K * temperature
    volume = float(cell.volume())
    decay = np.exp(-friction * timestep)

    def force(x, nbrs):
        return evaluate_arrays(potential, x, species, cell, nbrs).forces

    def step(carry, key):  # BAOAB; the list searched again when an atom moved > skin/2
        x, v, f, nbrs = carry
        v = v + 0.5 * timestep * f / mass
        x = x + 0.5 * timestep * v
        noise = jax.random.normal(key, v.shape, v.dtype)
        v = decay * v + np.sqrt((1 - decay ** 2) * kt / mass) * noise
        x = x + 0.5 * timestep * v
        nbrs = nbrs.update(x)
        f = force(x, nbrs)
        v = v + 0.5 * timestep * f / mass
        return (x, v, f, nbrs), None

    def sample(carry, key):
        carry, _ = jax.lax.scan(step, carry, jax.random.split(key, sample_every))
        x, v, _, nbrs = carry
        result = evaluate_arrays(potential, x, species, cell, nbrs, True)
        kinetic = 0.5 * mass * jnp.sum(v * v)
        pressure = (2 * kinetic / 3 - volume * jnp.sum(result.stress[:3]) / 3) / volume
        return carry, (pressure, 2 * kinetic / (3 * (n - 1) * dj.BOLTZMANN_EV_PER_K))

    @jax.jit
    def run(key):
        k_velocity, k_run = jax.random.split(key)
        v = jax.random.normal(k_velocity, system.positions.shape) * np.sqrt(kt / mass)
        v = v - v.mean(axis=0)
        carry = (system.positions, v, force(system.positions, neighbors), neighbors)
        carry, (pressure, kinetic_t) = jax.lax.scan(sample, carry, jax.random.split(k_run, steps // sample_every))
        return pressure, kinetic_t, carry[3].overflow

    pressure, kinetic_t, overflow = run(key)
    if bool(overflow) or not np.all(np.isfinite(np.asarray(pressure))):
        raise RuntimeError("the neighbour list overflowed (or a pressure is not finite): raise the capacity")
    kept = np.asarray(pressure)[len(pressure) // 4:] * GPA_PER_EV_A3
    blocks = np.array_split(kept, 10)  # block averages: samples 20 fs apart are correlated
    error = np.std([b.mean() for b in blocks]) / np.sqrt(len(blocks))
    return float(kept.mean()), float(error), float(np.asarray(kinetic_t)[len(kinetic_t) // 4:].mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[100.0, 300.0, 600.0, 900.0])
    parser.add_argument("--vg-temperatures", type=float, nargs="+",
                        default=[0.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0])
    parser.add_argument("--steps", type=int, default=6000, help="MD steps per lattice constant (2 fs)")
    parser.add_argument("--offset", type=float, default=0.012, help="Å either side of the VG a for the MD")
    parser.add_argument("--out", default="docs/lattice_parameter.md")
    parser.add_argument("--figure", default="docs/figures/lattice_parameter.png")
    args = parser.parse_args()
    potential = dj.load_eam(POTENTIAL)
    start = time.perf_counter()
    vg = {}
    for temperature in sorted(set(args.vg_temperatures) | set(args.temperatures)):
        vg[temperature] = vg_lattice_parameter(temperature)
        print(f"VG  T = {temperature:5.0f} K  a = {vg[temperature][0]:.5f} Å  max|σ_F| = {vg[temperature][1]:.1e} GPa",
              flush=True)
    vg_time = time.perf_counter() - start
    md = {}
    key = jax.random.PRNGKey(0)
    for temperature in args.temperatures:
        centre = vg[temperature][0]
        points = []
        for a in (centre - args.offset, centre, centre + args.offset):
            key, sub = jax.random.split(key)
            points.append((a, *md_pressure(potential, a, temperature, args.steps, sub)))
            print(f"MD  T = {temperature:5.0f} K  a = {a:.5f} Å  P = {points[-1][1]:+.4f} ± {points[-1][2]:.4f} GPa  "
                  f"T_kin = {points[-1][3]:.1f} K", flush=True)
        a_values, pressures, errors = (np.array([p[i] for p in points]) for i in range(3))
        slope, intercept = np.polyfit(a_values, pressures, 1, w=1 / errors)
        a_zero = -intercept / slope
        md[temperature] = (a_zero, float(np.max(errors) / abs(slope)))
        print(f"MD  T = {temperature:5.0f} K  a(P = 0) = {a_zero:.5f} ± {md[temperature][1]:.5f} Å", flush=True)
    total = time.perf_counter() - start
    a0 = vg[0.0][0] if 0.0 in vg else None
    lines = ["# Lattice parameter of fcc Al vs temperature: the VG free energy against MD", "",
             f"Mendelev 2009 Al–Mg EAM (`{POTENTIAL}`), pure Al, float64; `python scripts/lattice_parameter.py "
             f"--steps {args.steps}` ({total / 60:.1f} min on the 2-core CPU).", "",
             "* **VG**: `dmdjax.ase.FreeEnergyCalculator` (k relaxed at the positions, Gauss–Hermite m = 8) on the "
             "4-atom cubic cell, which it replicates internally; the cell relaxed with ASE's `BFGS` on "
             "`FrechetCellFilter` to zero free-energy pressure (max |σ_F| in the table). T = 0 is the EAM minimum.",
             f"* **MD**: classical Langevin dynamics (BAOAB, 2 fs, γ = 0.01 fs⁻¹) of 500 atoms, {args.steps} steps per "
             f"lattice constant at a_VG and a_VG ± {args.offset} Å (first quarter discarded), virial + kinetic "
             "pressure averaged (block standard error), a(P = 0) by a weighted linear fit. Both are classical, so "
             "the difference is the VG approximation (independent isotropic Gaussians, the mean field of the "
             "embedding), not quantum effects.", "",
             "| T (K) | a_VG (Å) | max \\|σ_F\\| (GPa) | a_MD (Å) | a_VG − a_MD (Å) | (a − a₀)/a₀ VG | (a − a₀)/a₀ MD |",
             "|---|---|---|---|---|---|---|"]
    for temperature in sorted(vg):
        a, sigma = vg[temperature]
        if temperature in md:
            a_md, err = md[temperature]
            md_cols = (f"{a_md:.4f} ± {err:.4f}", f"{a - a_md:+.4f}", f"{(a_md - a0) / a0:.2e}" if a0 else "—")
        else:
            md_cols = ("—", "—", "—")
        strain = f"{(a - a0) / a0:.2e}" if a0 else "—"
        lines.append(f"| {temperature:.0f} | {a:.4f} | {sigma:.0e} | {md_cols[0]} | {md_cols[1]} | {strain} | {md_cols[2]} |")
    lines += ["", f"VG scan {vg_time:.0f} s (each temperature a few BFGS steps of the 4-atom cell).", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    ts = sorted(vg)
    ax.plot(ts, [vg[t][0] for t in ts], "o-", label="VG free energy (dmdjax)")
    ax.errorbar(sorted(md), [md[t][0] for t in sorted(md)], yerr=[md[t][1] for t in sorted(md)], fmt="s",
                label="classical MD, P = 0")
    ax.set_xlabel("T (K)")
    ax.set_ylabel("a (Å)")
    ax.set_title("fcc Al, Mendelev 2009 EAM")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.figure, dpi=150)


if __name__ == "__main__":
    main()
