"""The figure of the sampler study (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import numpy as np

from .figures import pyplot


def draw(path, p, equilibrium: dict, kinetics: dict, rows) -> None:
    """(a) equilibrium Mg per (100) layer (folded; 0 = surface) at each composition: the sampler
    (replica standard errors) against DMD's constrained minimum; (b) the surface-layer c(t) of the
    sampler against DMD's K2 and K3 on the τ = 1/Γ₀ axis."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    colours = plt.cm.viridis(np.linspace(0, 0.85, len(equilibrium["nominal"])))
    for nominal, mean, error, dmd_c, colour in zip(equilibrium["nominal"], equilibrium["layer_c_sampler"],
                                                   equilibrium["layer_c_sampler_error"], equilibrium["layer_c_dmd"],
                                                   colours):
        layer = np.arange(len(mean))
        axes[0].errorbar(layer, np.maximum(mean, 1e-5), yerr=error, fmt="o", ms=4, capsize=2, color=colour,
                         label=f"sampler, c = {nominal:g}")
        axes[0].plot(layer, dmd_c, "-", color=colour, lw=1.2, label=f"DMD, c = {nominal:g}")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("(100) layer from the surface")
    axes[0].set_ylabel("Mg fraction")
    axes[0].set_title(f"equilibrium at {p.temperature:g} K", fontsize=10)
    axes[0].legend(fontsize=7, ncol=2)
    t = kinetics["time"][1:]
    sampler, error = kinetics["layer_c_sampler"][1:, 0], kinetics["layer_c_sampler_error"][1:, 0]
    axes[1].errorbar(t, sampler, yerr=error, fmt="o", ms=4, capsize=2, color="C0", label="sampler (surface layer)")
    axes[1].plot(t, kinetics["layer_c_k2"][1:, 0], "-", color="C1", label="DMD K2 (mean-field spin-diffusion)")
    axes[1].plot(t, kinetics["layer_c_k3"][1:, 0], "--", color="C2", label="DMD K3 (master equation)")
    for row in rows:
        if np.isclose(row["nominal"], p.kinetics_concentration):
            axes[1].axhline(row["surface"], color="C0", ls=":", lw=1, label="sampler equilibrium")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("Γ₀t = t/τ")
    axes[1].set_ylabel("surface-layer Mg fraction")
    axes[1].set_title(f"kinetics at c = {p.kinetics_concentration:g}", fontsize=10)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
