"""Figures of the chain study (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import numpy as np

from .figures import pyplot


def _spacetime_panel(ax, trajectory, title):
    """s_i(t) drawn at the sites' positions X_i(t): the mesh bends as the chain deforms."""
    t = np.asarray(trajectory.time)
    x = np.asarray(trajectory.positions)[..., 0]
    s = np.asarray(trajectory.order_parameter)
    image = ax.pcolormesh(x, np.broadcast_to(t[:, None], x.shape), s, cmap="RdBu_r", vmin=-1, vmax=1,
                          shading="nearest", rasterized=True)
    ax.plot(x[:, -1], t, color="k", lw=1.0, label="free end X_N(t)")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("site position X_i(t) (Å)")
    return image


def _displacement_panel(ax, trajectory, title, limit):
    """u_i(t) = X_i(t) − X_i(0): the mechanical deformation as the species move."""
    t = np.asarray(trajectory.time)
    x = np.asarray(trajectory.positions)[..., 0]
    image = ax.pcolormesh(np.broadcast_to(x[0], x.shape), np.broadcast_to(t[:, None], x.shape), x - x[0],
                          cmap="PuOr_r", vmin=-limit, vmax=limit, shading="nearest", rasterized=True)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("initial site position X_i(0) (Å)")
    return image


def spacetime(path, runs, p):
    """(a): K2 and K1 side by side: s_i(t) (top) and the site displacements (bottom)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.4), sharey=True, constrained_layout=True)
    _spacetime_panel(axes[0, 0], runs["K2"], f"mean-field spin-diffusion (K2, τ = {p.tau:g})")
    image = _spacetime_panel(axes[0, 1], runs["K1"], f"DMD (K1, k_c = β/2τ = {p.k1_mobility:g})")
    axes[0, 1].legend(loc="lower right", fontsize=8)
    fig.colorbar(image, ax=axes[0], label="s_i = E[σ_i]  (+1 A, −1 B)", shrink=0.9)
    limit = max(float(np.max(np.abs(np.asarray(r.positions) - np.asarray(r.positions)[:1]))) for r in runs.values())
    limit = limit if limit > 0 else 1.0
    _displacement_panel(axes[1, 0], runs["K2"], "K2: site displacement X_i(t) − X_i(0)", limit)
    image = _displacement_panel(axes[1, 1], runs["K1"], "K1: site displacement X_i(t) − X_i(0)", limit)
    fig.colorbar(image, ax=axes[1], label="displacement (Å)", shrink=0.9)
    for row in range(2):
        axes[row, 0].set_ylabel("t (τ)")
    fig.suptitle(f"(a) Chain of N = {p.n_sites}: the A/B couple interdiffuses; B-rich parts are longer "
                 f"(k_BT = {p.kt:g} eV, ε_AB = {p.epsilon[1]:g} eV, σ = {'/'.join(f'{v:g}' for v in p.sigma)} Å)",
                 fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sizes(path, by_size, p):
    """(b): K2 (top) and K1 (bottom) for every chain length."""
    plt = pyplot()
    ns = sorted(by_size)
    fig, axes = plt.subplots(2, len(ns), figsize=(3.0 * len(ns) + 1, 5.6), sharey=True, constrained_layout=True,
                             squeeze=False)
    image = None
    for column, n in enumerate(ns):
        for row, law in enumerate(("K2", "K1")):
            image = _spacetime_panel(axes[row, column], by_size[n][law], f"{law}, N = {n}")
            if row == 0:
                axes[row, column].set_xlabel("")
    for row in range(2):
        axes[row, 0].set_ylabel("t (τ)")
    fig.colorbar(image, ax=axes, label="s_i", shrink=0.8)
    fig.suptitle("(b) The same comparison for several chain lengths (top: mean-field spin-diffusion K2; "
                 "bottom: DMD K1)", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def sampler(path, runs, sampled, p, n_panels=4):
    """(c): mean field (K2), DMD (K1) and the replica average with a ±2 SE band, at several times."""
    plt = pyplot()
    times = np.asarray(sampled.time)
    picks = np.unique(np.linspace(1, times.size - 1, n_panels).round().astype(int))
    fig, axes = plt.subplots(1, picks.size, figsize=(3.4 * picks.size, 3.6), sharey=True, constrained_layout=True)
    sites = np.arange(np.asarray(sampled.order_parameter).shape[1])
    for ax, index in zip(np.atleast_1d(axes), picks):
        mean = np.asarray(sampled.order_parameter)[index]
        error = np.asarray(sampled.order_parameter_error)[index]
        ax.fill_between(sites, mean - 2 * error, mean + 2 * error, color="0.75", label="replicas ±2 SE")
        ax.plot(sites, mean, "k.-", lw=1, ms=3, label=f"spin-diffusion E[σ_i] ({p.replicas} replicas)")
        ax.plot(sites, np.asarray(runs["K2"].order_parameter)[index], "C3-", lw=1.5, label="mean field K2")
        ax.plot(sites, np.asarray(runs["K1"].order_parameter)[index], "C0--", lw=1.2, label="DMD K1")
        ax.set_title(f"t = {times[index]:g} τ", fontsize=10)
        ax.set_xlabel("site i")
        ax.axhline(0, color="0.5", lw=0.5)
    np.atleast_1d(axes)[0].set_ylabel("s_i")
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("(c) Mean field vs the replica average of the scale-separated spin-diffusion "
                 "(basin-averaged rates)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def equilibrium(path, finals, sampled, models):
    """(d): the last profiles of every model and the constrained minimiser, with a table."""
    plt = pyplot()
    fig, (ax, table_ax) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.3, 1]},
                                       constrained_layout=True)
    styles = {"K1": ("C0--", "DMD K1"), "K2": ("C3-", "mean field K2"),
              "spin_diffusion": ("k.-", "spin-diffusion E[σ]"), "equilibrium": ("C2-", "min F (Σ s fixed)")}
    for name, (x, s, _) in finals.items():
        style, label = styles[name]
        if name == "spin_diffusion":
            error = np.asarray(sampled.order_parameter_error)[-1]
            ax.fill_between(x[:, 0], s - 2 * error, s + 2 * error, color="0.8")
        ax.plot(x[:, 0], s, style, lw=1.4, ms=3, label=label)
    ax.set_xlabel("X_i (Å)")
    ax.set_ylabel("s_i")
    ax.legend(fontsize=8)
    ax.set_title(f"last output time t = {float(np.asarray(sampled.time)[-1]):g} τ", fontsize=10)
    table_ax.axis("off")
    rows = [[name, f"{m['free_energy']:.4f}", f"{m['interface_position']:.2f}", f"{m['interface_width']:.2f}",
             f"{m['max_abs_diff_equilibrium']:.3f}", f"{m['rms_diff_equilibrium']:.3f}"] for name, m in models.items()]
    table = table_ax.table(cellText=rows, colLabels=["model", "F (eV)", "x0 (Å)", "w (Å)", "max|s−s*|", "rms"],
                           loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.auto_set_column_width(range(6))
    table.scale(1.0, 1.4)
    fig.suptitle("(d) Long-time profiles of all models and their differences from the minimiser s* of F",
                 fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
