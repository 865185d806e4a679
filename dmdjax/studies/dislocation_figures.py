"""The figure of the dislocation study (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import numpy as np

from .figures import pyplot


def _column_map(ax, fig, xy, values, mobile, title, cmap, norm, label):
    ax.scatter(xy[~mobile, 0], xy[~mobile, 1], s=6, c="lightgrey", marker="s", label="clamped")
    image = ax.scatter(xy[mobile, 0], xy[mobile, 1], s=14, c=values[mobile], cmap=cmap, norm=norm)
    ax.plot([0], [0], marker="$\\perp$", ms=14, color="k", ls="none")
    ax.set_aspect("equal")
    ax.set_xlabel("x ∥ b  [1̄10] (Å)")
    ax.set_ylabel("y  [111] (Å)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label=label, shrink=0.85)


def draw(path, p, time_rate_units, xy, column_c, column_pressure, mobile, sectors, angles, angular_c, angular_p,
         strip_y, strip_c, strip_pressure) -> None:
    """(a) elastic pressure map; (b), (c) Mg per column at a middle and the last output;
    (d) c and p around the core; (e) c and p across the glide plane; (f) c on the tensile,
    neutral and compressive sites vs Γ₀t."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(16, 9.5))
    times = np.asarray(time_rate_units)
    limit = np.percentile(np.abs(column_pressure[mobile]), 95)
    from matplotlib.colors import LogNorm, Normalize

    _column_map(axes[0, 0], fig, xy, column_pressure, mobile, "(a) elastic pressure p = −B tr ε", "RdBu_r",
                Normalize(-limit, limit), "p (GPa) (clamped shell grey)")
    shown = column_c[1:, mobile]
    norm = LogNorm(max(float(shown.min()), 1e-4), float(shown.max()))  # one scale for both maps
    middle = len(times) // 2
    for ax, index, letter in ((axes[0, 1], middle, "b"), (axes[0, 2], -1, "c")):
        _column_map(ax, fig, xy, column_c[index], mobile, f"({letter}) Mg per column, Γ₀t = {times[index]:.3g}",
                    "viridis", norm, "c (log scale)")

    ax = axes[1, 0]
    colours = plt.cm.viridis(np.linspace(0, 1, len(times)))
    for index in range(1, len(times)):
        ax.plot(angles, angular_c[index], "o-", ms=3, color=colours[index], label=f"Γ₀t = {times[index]:.3g}")
    ax.axhline(p.concentration, color="grey", ls=":", lw=1)
    ax.set_xlabel("angle around the core from +b (degrees)")
    ax.set_ylabel("c (mobile columns beyond the core)")
    twin = ax.twinx()
    twin.plot(angles, angular_p, "k--", lw=1.2, label="p")
    twin.set_ylabel("elastic p (GPa), dashed")
    ax.set_title("(d) around the core", fontsize=10)
    ax.legend(fontsize=7, ncol=2)

    ax = axes[1, 1]
    for index in range(1, len(times)):
        ax.plot(strip_y, strip_c[index], "o-", ms=3, color=colours[index])
    ax.axhline(p.concentration, color="grey", ls=":", lw=1)
    ax.set_xlabel("y across the glide plane, |x| < 2.5 Å (Å)")
    ax.set_ylabel("c")
    twin = ax.twinx()
    twin.plot(strip_y, strip_pressure, "k--", lw=1.2)
    twin.set_ylabel("elastic p (GPa), dashed")
    ax.set_title("(e) across the glide plane through the core", fontsize=10)

    ax = axes[1, 2]
    for name, marker in (("tensile", "o"), ("neutral", "s"), ("compressive", "^")):
        ax.plot(times[1:], sectors[name][1:], marker + "-", label=f"{name} sites")
    ax.axhline(p.concentration, color="grey", ls=":", lw=1, label="nominal")
    ax.set_xscale("log")
    ax.set_xlabel("Γ₀ t   (Γ₀ = ν exp(−Q/k_BT))")
    ax.set_ylabel("mean c")
    ax.set_title(f"(f) p < −{p.pressure_threshold:g}, |p| ≤ {p.pressure_threshold:g}, p > "
                 f"{p.pressure_threshold:g} GPa", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle(f"Edge dislocation in Al–{100 * p.concentration:g}% Mg, {p.temperature:g} K (DMD, K3)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
