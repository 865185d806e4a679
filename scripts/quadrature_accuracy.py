"""Accuracy of the Gaussian pair-average rules against Monte Carlo; writes docs/quadrature.md.

    python scripts/quadrature_accuracy.py [--samples 4000000]
"""

import argparse

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import dmdjax as dj  # noqa: E402
from dmdjax.quadrature import gaussian_average, monte_carlo_average  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=4_000_000)
    parser.add_argument("--out", default="docs/quadrature.md")
    args = parser.parse_args()
    lj = dj.LennardJones(1.0, 1.0, cutoff=3.0)
    eam = dj.load_eam("AlMg_Mendelev2009")
    kt = lambda t: dj.BOLTZMANN_EV_PER_K * t  # noqa: E731
    # (label, potential, term, (a, b), R, sigma_ij^2, d). sigma_ij^2 = 2/(beta k) with k ~ 4.4 eV/Å² for Al.
    cases = [
        ("LJ φ, R = 1.2σ, σ_ij = 0.08σ", lj, 0, (0, 0), 1.2, 0.08**2, 3),
        ("LJ φ, R = 1.12σ, σ_ij = 0.05σ", lj, 0, (0, 0), 1.12, 0.05**2, 3),
        ("LJ φ, 1-D, R = 1.2σ, σ_ij = 0.08σ", lj, 0, (0, 0), 1.2, 0.08**2, 1),
        ("LJ φ, 2-D, R = 1.2σ, σ_ij = 0.08σ", lj, 0, (0, 0), 1.2, 0.08**2, 2),
    ]
    for temperature in (300.0, 900.0):
        variance = 2 * kt(temperature) / 4.4
        for distance, shell in ((2.86, "1st"), (4.05, "2nd")):
            for term, (a, b), name in ((0, (0, 0), "φ_AlAl"), (0, (0, 1), "φ_AlMg"), (0, (1, 1), "φ_MgMg"),
                                       (1, (0, 0), "f_Al→Al"), (1, (1, 0), "f_Mg→Al")):
                cases.append((f"Mendelev {name}, {shell} shell R = {distance} Å, {temperature:.0f} K "
                              f"(σ_ij = {np.sqrt(variance):.3f} Å)", eam, term, (a, b), distance, variance, 3))
    rules = [("GH m=4", "gauss-hermite", 4), ("GH m=8 (default)", "gauss-hermite", 8),
             ("GH m=16", "gauss-hermite", 16), ("third-degree", "third-degree", 0)]
    lines = [
        "# Gaussian pair averages: quadrature rules against Monte Carlo",
        "",
        f"Each row: ⟨g(|R e₁ + ξ|)⟩ with ξ ~ N(0, σ_ij² I_d), Monte Carlo with {args.samples:.0e} samples "
        "(mean ± standard error), and the error of each rule in units of the Monte Carlo standard error "
        "(|rule − MC| / SE) and relative to |MC|. `python scripts/quadrature_accuracy.py`, float64.",
        "",
        "| case | MC mean ± SE | " + " | ".join(f"{label}: err/SE, rel" for label, _, _ in rules) + " |",
        "| --- | --- | " + " | ".join("---" for _ in rules) + " |",
    ]
    key = jax.random.PRNGKey(2026)
    worst = {label: 0.0 for label, _, _ in rules}
    worst_se = {label: 0.0 for label, _, _ in rules}
    for label, potential, term, (a, b), distance, variance, dim in cases:
        key, sub = jax.random.split(key)
        mean, error = monte_carlo_average(potential, distance, variance, dim, args.samples, sub)
        m, e = float(mean[term, a, b]), float(error[term, a, b])
        cells = []
        for rule_label, rule, nodes in rules:
            value = float(gaussian_average(potential, jnp.asarray(distance), jnp.asarray(variance), dim, rule,
                                           nodes or 8)[term, a, b])
            rel = abs(value - m) / abs(m)
            worst[rule_label] = max(worst[rule_label], rel)
            worst_se[rule_label] = max(worst_se[rule_label], abs(value - m) / e)
            cells.append(f"{abs(value - m) / e:.1f}, {rel:.1e}")
        lines.append(f"| {label} | {m:.6g} ± {e:.1g} | " + " | ".join(cells) + " |")
        print(lines[-1])
    lines += ["", "Largest error over the table, relative and in Monte Carlo standard errors: " +
              ", ".join(f"{k}: {worst[k]:.1e} ({worst_se[k]:.1f} SE)" for k in worst) + ".", "",
              f"The default (Gauss–Hermite, m = 8; the exact 1-D reduction in 3-D) stays within "
              f"{worst_se['GH m=8 (default)']:.1f} Monte Carlo standard errors in every case, that is, it is "
              "converged to the statistical resolution of 4·10⁶ samples (m = 16 gives the same numbers). "
              "m = 4 is already close. The third-degree 2d-point rule of the LAMMPS-based DMD codes errs "
              "systematically, by 0.5 % for the LJ anchor of DESIGN.md §2 and up to "
              f"{100 * worst['third-degree']:.0f} % here (it integrates only up to third-degree polynomials "
              "of ξ exactly)."]
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
