"""The figure of the surface study (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import numpy as np

from .alloy import centre_mean, langmuir_mclean
from .figures import pyplot


def _log_log(ax, xlabel, ylabel, title) -> None:
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)


def draw(path, p, time_rate_units, layer_c, isotherm_rows, energies) -> None:
    """(a) Mg per (100) layer at the output times; (b) surface and centre layers vs Γ₀t;
    (c) the isotherm: DMD's c_s(c_b) against Langmuir–McLean with the statics E_seg and DMD's ΔG."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    n_layers = layer_c.shape[1]
    half = (n_layers + 1) // 2
    colours = plt.cm.viridis(np.linspace(0, 1, len(time_rate_units)))
    for index, (t, colour) in enumerate(zip(time_rate_units, colours)):
        axes[0].plot(np.arange(half), layer_c[index, :half], "o-", ms=3, color=colour, label=f"Γ₀t = {t:.3g}")
    axes[0].axhline(p.concentration, color="grey", ls=":", lw=1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("(100) layer from the surface")
    axes[0].set_ylabel("Mg concentration c")
    axes[0].set_title(f"(a) Al–{100 * p.concentration:g}% Mg, {p.temperature:g} K: layer profiles", fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)

    times = np.asarray(time_rate_units)
    centre = centre_mean(layer_c)
    axes[1].plot(times[1:], layer_c[1:, 0], "o-", label="surface layer")
    axes[1].plot(times[1:], layer_c[1:, 1], "s-", label="subsurface layer")
    axes[1].plot(times[1:], centre[1:], "^-", label="centre layers")
    axes[1].plot(times[1:], langmuir_mclean(centre[1:], energies["relaxed"], p.temperature), "k--", lw=1,
                 label="Langmuir–McLean c_s at the current c_centre\n(statics E_seg; the equilibrium value)")
    _log_log(axes[1], "Γ₀ t   (Γ₀ = ν exp(−Q/k_BT))", "c", "(b) segregation kinetics (K3)")

    bulk = np.array([row["bulk"] for row in isotherm_rows])
    surface = np.array([row["surface"] for row in isotherm_rows])
    grid = np.geomspace(min(bulk.min(), centre[-1]) / 2, max(bulk.max(), centre[-1]) * 2, 100)
    axes[2].plot(bulk, surface, "o", label="DMD equilibrium (min F at fixed Σc)")
    axes[2].plot(centre[-1], layer_c[-1, 0], "s", label=f"DMD kinetics at Γ₀t = {times[-1]:g}")
    axes[2].plot(grid, langmuir_mclean(grid, energies["relaxed"], p.temperature), "k-",
                 label=f"LM, statics E_seg = {energies['relaxed']:+.3f} eV")
    axes[2].plot(grid, langmuir_mclean(grid, energies["mean_field"], p.temperature), "k:",
                 label=f"LM, DMD ΔG = {energies['mean_field']:+.3f} eV")
    _log_log(axes[2], "centre-layer c_b", "surface-layer c_s", "(c) Langmuir–McLean isotherm")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
