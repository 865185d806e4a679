r"""Mg segregation to a free (100) surface of Al–Mg (seed "DMD" examples; DESIGN.md §3-4).

``dmdjax alloy surface`` runs DMD on a slab of fcc Al–Mg with the Mendelev (2009) Al–Mg EAM
potential, free along x and periodic in the surface plane: the species follow the master
equation (K3) with Arrhenius rates ν e^{−βQ} e^{∓βΔμ^ex}, (X, k) relaxed at every output
time (``relax_at="interval"`` of :func:`dmdjax.dmd.run`). The published example used
Al–6 at.% Mg at 600 K, ν = 10, Q = 0.77 eV, a = 4.108 Å and 20 × 8 × 8 cubic cells
(``--cells 20,8,8``); the CPU default is 10 × 5 × 5 cells (1000 atoms, 20 (100) layers: the
smallest periodic cross-section for the potential's 7.5 Å cut-off). Time is reported in
units of 1/Γ₀, Γ₀ = ν e^{−βQ} (3.4·10⁻⁶ per unit time of the run at 600 K).

Dilute-limit check (Langmuir–McLean): for nominal compositions in the dilute range the
composition-constrained minimum of F (:func:`dmdjax.dmd.equilibrium`, self-consistent mean
field) gives the surface-layer concentration c_s against the centre-layer one c_b, compared
with the isotherm c_s/(1 − c_s) = c_b/(1 − c_b) · exp(−E_seg/k_BT), where E_seg = E(Mg in
the surface layer) − E(Mg in the centre layer) is computed from the same potential by
molecular statics (one Mg in the slab, all atoms relaxed). The study also reports why DMD's
own dilute segregation free energy ΔG = 2(μ^ex_b − μ^ex_s) differs from E_seg, term by term:
the solute's own relaxation (absent in mean field: E_seg relaxed vs unrelaxed), the
linearisation of the embedding in the mean field (unrelaxed E_seg vs ΔG at T → 0) and the
vibrational (Gaussian) part (ΔG at T vs at T → 0).

Outputs (``--output``, default ``alloy-surface/``): ``trajectory.npz`` (the DMD run, also its
checkpoint: ``--resume`` continues it), ``frames.extxyz`` (one frame per output time, per-atom
``c`` = Mg concentration, ``k`` eV/Å², ``site_free_energy`` eV; per frame ``time``,
``time_rate_units``, ``total_free_energy``; ASE and OVITO read
it), ``profiles.npz`` (``time``, ``time_rate_units``, ``layer_x`` Å, ``layer_c`` (T, L)),
``isotherm.npz``, ``statics.json`` and ``isotherm.json`` (the finished stages: ``--resume``
reuses them instead of recomputing), ``run.json``, ``summary.json`` (keys in :func:`run_surface_study`) and
``fig_surface.png``.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .. import dmd, io
from ..energy import site_energies
from ..relax import default_tolerance
from ..free_energy import VGFreeEnergy
from ..neighbors import neighbor_list
from ..progress import logger, track
from ..state import DMDState
from ..systems import System, fcc
from .alloy import (SPECIES, centre_mean, langmuir_mclean, arrhenius_rate, check_checkpoint, conservation, group_means, load_alloy_potential,
                     mg_fraction, run_kinetics, save_times, summary_header, time_line, uniform_order_parameter,
                     validate_parameters, write_frames)


@dataclasses.dataclass(frozen=True)
class SurfaceParameters:
    """Parameters of the surface study (defaults: the published example on a CPU-sized slab).

    Attributes:
        cells: cubic cells (x, y, z); x is free (two (100) surfaces), y and z periodic and at
            least 5: each pair must interact through one periodic image, and the VG free energy
            reaches past the 7.5 Å cut-off by the Gaussians' reach (0.6-0.9 Å at 600 K), which
            4 cells (16.4 Å, half-width 8.2 Å) do not hold.
        concentration: nominal Mg fraction of the kinetic run.
        temperature: K. attempt_frequency: ν per unit time (per ``time_unit``: "s", "ps", ...
            or "", the run's own unit; every time of the run is in that unit); activation_energy: Q, eV.
        lattice_constant: Å. kinetic_cutoff: exchange bond length, Å (between the first,
            a/√2, and second, a, neighbour shells: first-neighbour exchanges).
        t_end: end of the kinetic run in units of 1/Γ₀ (Γ₀ = ν e^{−βQ});
        n_outputs: output times, log-spaced from ``t_first`` (also in 1/Γ₀) to ``t_end``.
        isotherm: nominal Mg fractions of the Langmuir–McLean check (dilute).
        low_temperature: K, the T → 0 reference of the decomposition of ΔG.
        species_widths: also report ΔG with one Gaussian width per site and species
            (``VGFreeEnergy(widths="species")``, DESIGN.md §2.1: the solute's own vibrational
            entropy); its sums run through autodiff, several times the cost of the site family's
            relaxation: turn it off for slabs beyond ~10⁴ atoms.
        potential: a bundled potential name or an EAM file with species Al and Mg.
        rtol, atol: the ODE tolerances; max_steps: solver steps per output interval.
    """

    cells: tuple = (10, 5, 5)
    concentration: float = 0.06
    temperature: float = 600.0
    attempt_frequency: float = 10.0
    time_unit: str = ""
    activation_energy: float = 0.77
    lattice_constant: float = 4.108
    kinetic_cutoff: float = 3.5
    t_end: float = 30.0
    t_first: float = 0.01
    n_outputs: int = 13
    isotherm: tuple = (0.001, 0.002, 0.005, 0.01, 0.02)
    low_temperature: float = 20.0
    species_widths: bool = True
    potential: str = "AlMg_Mendelev2009"
    rtol: float = 1e-6
    atol: float = 1e-8
    max_steps: int = 100_000

    def __post_init__(self):
        cells = tuple(int(c) for c in self.cells)
        if len(cells) != 3 or cells[0] < 3 or min(cells[1:]) < 5:
            raise ValueError(f"cells must be (nx >= 3, ny >= 5, nz >= 5) cubic cells; got {self.cells!r}")
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "isotherm", tuple(float(c) for c in self.isotherm))
        if not self.isotherm:
            raise ValueError("isotherm needs at least one nominal composition")
        for index, value in enumerate(self.isotherm):
            if not 0 < value < 1:
                raise ValueError(f"isotherm[{index}] must lie in (0, 1); got {value!r}")
        validate_parameters(self, ("low_temperature",))

    @classmethod
    def quick(cls) -> "SurfaceParameters":
        """A small, short study for tests and a first look (6 × 5 × 5 cells, t ≤ 1/Γ₀)."""
        return cls(cells=(6, 5, 5), t_end=1.0, t_first=0.03, n_outputs=4, isotherm=(0.002, 0.01))

    @property
    def rate(self) -> float:
        """Γ₀ = ν e^{−Q/k_BT}, per unit time."""
        return arrhenius_rate(self)

    def save_times(self) -> np.ndarray:
        """0 and ``n_outputs − 1`` log-spaced times, in the run's time unit."""
        return save_times(self)


def build_slab(p: SurfaceParameters) -> tuple[System, np.ndarray]:
    """The slab (all Al; s carries the composition) and each atom's (100) layer index (0 = surface)."""
    system = fcc(p.lattice_constant, p.cells, "Al", pbc=(False, True, True))
    x = np.asarray(system.positions)[:, 0]
    layers = np.rint((x - x.min()) / (0.5 * p.lattice_constant)).astype(int)
    return system, layers


def molecular_statics(potential, positions, species, cell, neighbors, tolerance=1e-6):
    """Molecular statics: min V over positions (:func:`dmdjax.relax.minimize_energy`, on the
    device); the tolerance on max |force| is loosened to 1e-3 eV/Å in float32. Returns the
    relaxed positions and a neighbour list valid there."""
    from ..relax import minimize_energy

    tolerance = max(tolerance, float(default_tolerance(positions.dtype)))
    result = minimize_energy(potential, positions, species, cell, neighbors, tolerance=tolerance)
    return result.positions, result.neighbors


def site_energy_difference(first: np.ndarray, second: np.ndarray) -> float:
    """Σ_i (e_i − e'_i) of two site-energy arrays, summed in float64. A difference of two totals
    would carry the totals' rounding: in float32 a 131 072-atom slab's −4.4·10⁵ eV has a spacing
    of 0.03 eV, the size of what is measured; per-site differences keep ~10⁻⁷ eV each."""
    return float(np.sum(np.asarray(first, np.float64) - np.asarray(second, np.float64)))


MIN_CROSS_SECTION = 5
"""Cubic cells across the slab (y, z) of the smallest periodic cell the study allows: the Gaussians
of the 7.5 Å cut-off's pairs reach past the 8.2 Å half-width of 4 cells."""


def layer_slab(p: SurfaceParameters) -> tuple[System, np.ndarray]:
    """The slab with the smallest allowed cross-section (``MIN_CROSS_SECTION`` cells in y and z)
    and its layer indices: where the mean-field state is uniform within each layer (the
    dilute ΔG and the isotherm's equilibria, which start from uniform s on the perfect lattice),
    every site of a layer is equivalent by the lattice translations across the slab, so these
    equilibria are the same per site for any periodic cross-section and are solved on this one
    (at ``--cells 32,32,32``: 3 200 sites in place of 131 072)."""
    nx, ny, nz = p.cells
    return build_slab(dataclasses.replace(p, cells=(nx, min(ny, MIN_CROSS_SECTION), min(nz, MIN_CROSS_SECTION))))


def segregation_energies(potential, slab: System, layers: np.ndarray, neighbors, deeper_layers=()) -> dict:
    """E_seg (eV) of one Mg by molecular statics: surface layer minus centre layer.

    Returns ``relaxed`` (all atoms relaxed around the Mg) and ``unrelaxed`` (Mg put into
    the relaxed pure-Al slab), with the site indices used; with ``deeper_layers`` also
    ``relaxed_layers`` {l: relaxed E_l of one Mg in layer l against the centre}. Energies are
    compared site by site (:func:`site_energy_difference`), so float32 resolves E_seg at any
    slab size.
    """
    mg = potential.species_index("Mg")
    centre_layer = int(layers.max()) // 2
    surface_site, centre_site = int(np.flatnonzero(layers == 0)[0]), int(np.flatnonzero(layers == centre_layer)[0])
    pure = slab.species
    host, host_neighbors = molecular_statics(potential, slab.positions, pure, slab.cell, neighbors)
    out = {"surface_site": surface_site, "centre_site": centre_site, "centre_layer": centre_layer}
    energies = {}
    for name, site in (("surface", surface_site), ("centre", centre_site)):
        species = pure.at[site].set(mg)
        energies[name, "unrelaxed"] = site_energies(potential, host, species, slab.cell, host_neighbors)
        relaxed, relaxed_neighbors = molecular_statics(potential, host, species, slab.cell, host_neighbors)
        energies[name, "relaxed"] = site_energies(potential, relaxed, species, slab.cell, relaxed_neighbors)
    for kind in ("relaxed", "unrelaxed"):
        out[kind] = site_energy_difference(energies["surface", kind], energies["centre", kind])
    out["relaxed_layers"] = {}
    for layer in deeper_layers:
        species = pure.at[int(np.flatnonzero(layers == layer)[0])].set(mg)
        relaxed, relaxed_neighbors = molecular_statics(potential, host, species, slab.cell, host_neighbors)
        out["relaxed_layers"][layer] = site_energy_difference(
            site_energies(potential, relaxed, species, slab.cell, relaxed_neighbors), energies["centre", "relaxed"])
    return out


def mean_field_segregation(vg: VGFreeEnergy, positions, layers: np.ndarray, neighbors, concentration=1e-4) -> float:
    """DMD's dilute segregation free energy ΔG = 2(μ^ex_centre − μ^ex_surface) (eV) at a uniform
    Mg fraction ``concentration``, (X, k) relaxed: the E_seg that the mean field sees."""
    from ..relax import relax

    s = uniform_order_parameter(concentration, positions.shape[0], positions.dtype)
    relaxed = relax(vg, vg.initial_state(positions, s, neighbors), neighbors)
    excess = vg.excess_chemical_potential(relaxed.state, relaxed.neighbors)
    excess = group_means(excess, layers)
    return float(2.0 * (excess[int(layers.max()) // 2] - excess[0]))


def layer_relaxed_start(slab: System, layers: np.ndarray, concentration: float, thin_vg: VGFreeEnergy,
                        thin: System, thin_layers: np.ndarray, thin_neighbors) -> DMDState:
    """The kinetic run's start on ``slab``: (X, k) relaxed at the uniform Mg fraction
    ``concentration`` on the layer slab (``thin``, :func:`layer_slab`) and copied layer by layer
    — each layer's shift along x (the only one the symmetry allows) and its k. Exact for the
    layer-uniform state (every site of a layer is equivalent), so relaxing the full slab from it
    takes a few iterations where a start from the lattice takes tens of F + ∇F of every site.

    Raises:
        ValueError: the two slabs do not have the same layers.
    """
    from ..relax import relax

    if int(thin_layers.max()) != int(layers.max()):
        raise ValueError(f"the layer slab has {int(thin_layers.max()) + 1} layers and the slab "
                         f"{int(layers.max()) + 1}: not the same stack")
    s = uniform_order_parameter(concentration, thin.n_atoms, thin.positions.dtype)
    relaxed = relax(thin_vg, thin_vg.initial_state(thin.positions, s, thin_neighbors), thin_neighbors).state
    shift = group_means(relaxed.positions[:, 0] - thin.positions[:, 0], thin_layers)
    stiffness = group_means(relaxed.stiffness, thin_layers)
    dtype = slab.positions.dtype
    positions = slab.positions.at[:, 0].add(jnp.asarray(shift[layers], dtype))
    return DMDState(positions, jnp.asarray(stiffness[layers], dtype),
                    uniform_order_parameter(concentration, slab.n_atoms, dtype))


def run_surface_study(p: SurfaceParameters, output, *, resume: bool = False, overwrite: bool = False,
                      progress: bool = True, log=logger.info) -> dict:
    """Run the study (statics, isotherm, kinetics), write every file, and return the summary.

    ``summary.json`` keys: ``device``, ``platform``, ``dtype``, ``devices`` (1), ``processes``, ``n_atoms``, ``cells``,
    ``n_layers``; ``wall_time_s`` (``statics``, ``isotherm``, ``kinetics``, ``total``);
    ``rate`` Γ₀ (per unit time); ``time_reached`` (run units) and ``time_reached_rate_units``
    (Γ₀ t); ``segregation_energy_ev``: ``relaxed``, ``unrelaxed`` (statics), ``mean_field``
    (DMD's dilute ΔG at T), ``mean_field_low_temperature`` (at ``low_temperature``) and, with
    ``species_widths``, ``mean_field_species_widths`` (ΔG at T with per-species widths);
    ``isotherm``: per nominal composition ``nominal``, ``bulk`` c_b, ``surface`` c_s,
    ``langmuir_mclean`` (c_s predicted from c_b and the relaxed E_seg), ``langmuir_mclean_mean_field``
    (from DMD's ΔG), ``residual_ev``; ``kinetics``: ``surface_final``, ``bulk_final``,
    ``subsurface_final``, ``langmuir_mclean_final`` (the isotherm at the run's final c_b),
    ``sum_c_max_change`` (max |Σc(t) − Σc(0)|), ``free_energy_max_increase`` (largest rise of
    F between outputs, eV; ≤ 0 means F decreased throughout), ``free_energy_change`` (eV),
    ``resumed_from`` (outputs already in the checkpoint).

    Raises:
        FileExistsError: ``output`` holds files and neither ``resume`` nor ``overwrite`` is set.
    """
    output = Path(output)
    potential = load_alloy_potential(p.potential)
    run = io.open_study_folder(output, {"study": "alloy surface", "parameters": dataclasses.asdict(p),
                                        "rate": p.rate}, overwrite=overwrite, resume=resume)
    check_checkpoint(output, resume)
    start, walls = time.perf_counter(), {}
    slab, layers = build_slab(p)
    n_layers = int(layers.max()) + 1
    neighbors = neighbor_list(slab.positions, slab.cell, potential.cutoff, skin=0.5)
    vg = VGFreeEnergy(potential, slab.cell, p.temperature, slab.n_atoms, species=SPECIES)
    log(f"slab {p.cells[0]}×{p.cells[1]}×{p.cells[2]} cells, {slab.n_atoms} atoms, {n_layers} layers; "
        f"Γ₀ = {p.rate:.4g} per unit time; {run['device']}, {run['dtype']}")

    # The layer-uniform equilibria (dilute ΔG, isotherm) on the smallest cross-section: layer_slab.
    thin, thin_layers = layer_slab(p)
    thin_neighbors = neighbor_list(thin.positions, thin.cell, potential.cutoff, skin=0.5)
    thin_vg = VGFreeEnergy(potential, thin.cell, p.temperature, thin.n_atoms, species=SPECIES)

    tick = time.perf_counter()
    energies = _stage(output / "statics.json", resume)
    if energies is None:
        statics = segregation_energies(potential, slab, layers, neighbors)
        cold = VGFreeEnergy(potential, thin.cell, p.low_temperature, thin.n_atoms, species=SPECIES)
        energies = {"relaxed": statics["relaxed"], "unrelaxed": statics["unrelaxed"],
                    "mean_field": mean_field_segregation(thin_vg, thin.positions, thin_layers, thin_neighbors),
                    "mean_field_low_temperature": mean_field_segregation(cold, thin.positions, thin_layers,
                                                                         thin_neighbors)}
        if p.species_widths:
            resolved = VGFreeEnergy(potential, thin.cell, p.temperature, thin.n_atoms, species=SPECIES,
                                    widths="species")
            energies["mean_field_species_widths"] = mean_field_segregation(resolved, thin.positions, thin_layers,
                                                                           thin_neighbors)
        io.write_json(output / "statics.json", energies)
    walls["statics"] = time.perf_counter() - tick
    log("E_seg (eV): relaxed {relaxed:+.4f}, unrelaxed {unrelaxed:+.4f}; DMD ΔG {mean_field:+.4f} at T, "
        "{mean_field_low_temperature:+.4f} at T → 0".format(**energies) + _species_widths_note(energies))

    tick = time.perf_counter()
    nominal = list(p.isotherm)
    isotherm_rows = _stage(output / "isotherm.json", resume)
    steps = range(0 if isotherm_rows is not None else len(nominal))
    steps = track(steps, "isotherm", "composition", enabled=progress)
    isotherm_layers, isotherm_rows = [], isotherm_rows or []
    tolerance = max(1e-7, dmd.default_equilibrium_tolerance(thin.positions.dtype))  # 1e-4 eV in float32
    for index in steps:
        s = uniform_order_parameter(nominal[index], thin.n_atoms, thin.positions.dtype)
        state = dmd.equilibrium(thin_vg, thin_vg.initial_state(thin.positions, s, thin_neighbors), thin_neighbors,
                                method="self-consistent", tolerance=tolerance)
        layer_c = group_means(mg_fraction(state.order_parameter), thin_layers)
        isotherm_layers.append(layer_c)
        bulk = float(centre_mean(layer_c))
        isotherm_rows.append({"nominal": nominal[index], "bulk": bulk, "surface": float(layer_c[0]),
                              "langmuir_mclean": float(langmuir_mclean(bulk, energies["relaxed"], p.temperature)),
                              "langmuir_mclean_mean_field": float(langmuir_mclean(bulk, energies["mean_field"],
                                                                                  p.temperature)),
                              "residual_ev": state.residual})
    if isotherm_layers:
        io.save_npz(output / "isotherm.npz", {"nominal": np.array(nominal), "layer_c": np.array(isotherm_layers)})
        io.write_json(output / "isotherm.json", isotherm_rows)
    walls["isotherm"] = time.perf_counter() - tick

    tick = time.perf_counter()
    times = p.save_times()
    trajectory, resumed_from = run_kinetics(
        p, vg, slab.positions, neighbors, output, resume=resume, overwrite=overwrite, progress=progress,
        start=lambda: layer_relaxed_start(slab, layers, p.concentration, thin_vg, thin, thin_layers,
                                             thin_neighbors))
    walls["kinetics"] = time.perf_counter() - tick

    c = mg_fraction(trajectory.order_parameter)
    layer_c = group_means(c, layers)
    layer_x = group_means(np.asarray(trajectory.positions)[-1, :, 0], layers)
    io.save_npz(output / "profiles.npz", {"time": np.asarray(trajectory.time), "time_rate_units": times * p.rate,
                                          "layer_x": layer_x, "layer_c": layer_c})
    write_frames(output / "frames.extxyz", vg, slab, trajectory, neighbors, p.rate)
    bulk_final = float(centre_mean(layer_c[-1]))
    kinetics = {"surface_final": float(layer_c[-1, 0]), "subsurface_final": float(layer_c[-1, 1]),
                "bulk_final": bulk_final,
                "langmuir_mclean_final": float(langmuir_mclean(bulk_final, energies["relaxed"], p.temperature)),
                **conservation(c, trajectory.free_energy), "resumed_from": resumed_from}

    from . import surface_figures

    surface_figures.draw(output / "fig_surface.png", p, times * p.rate, layer_c, isotherm_rows, energies)
    walls["total"] = time.perf_counter() - start
    summary = {**summary_header("alloy surface", run, walls, times, p.rate),
               "n_atoms": slab.n_atoms, "cells": list(p.cells), "n_layers": n_layers,
               "segregation_energy_ev": energies, "isotherm": isotherm_rows, "kinetics": kinetics}
    summary = io.write_study_summary(output, summary)
    log(format_summary(summary, output))
    return summary


def _stage(path: Path, resume: bool):
    """A finished stage's results (``statics.json``, ``isotherm.json``) when resuming, else None."""
    if not (resume and path.is_file()):
        return None
    import json

    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"--resume: {str(path)!r} is damaged ({err}); start again with --overwrite") from None


def _species_widths_note(energies: dict) -> str:
    if "mean_field_species_widths" not in energies:
        return ""
    return f"; with per-species widths {energies['mean_field_species_widths']:+.4f} (T)"


def format_summary(summary: dict, output: Path) -> str:
    e = summary["segregation_energy_ev"]
    lines = [f"\nE_seg (eV): statics relaxed {e['relaxed']:+.4f}, unrelaxed {e['unrelaxed']:+.4f}; "
             f"DMD ΔG {e['mean_field']:+.4f} (T), {e['mean_field_low_temperature']:+.4f} (T → 0)"
             + _species_widths_note(e),
             f"{'nominal':>8s} {'c_b':>9s} {'c_s':>8s} {'LM(E_seg)':>10s} {'LM(ΔG)':>8s}"]
    for row in summary["isotherm"]:
        lines.append(f"{row['nominal']:8.4f} {row['bulk']:9.5f} {row['surface']:8.4f} {row['langmuir_mclean']:10.4f} "
                     f"{row['langmuir_mclean_mean_field']:8.4f}")
    k = summary["kinetics"]
    lines.append(f"kinetics to Γ₀t = {summary['time_reached_rate_units']:g}: c_surface {k['surface_final']:.4f}, "
                 f"c_subsurface {k['subsurface_final']:.4f}, c_bulk {k['bulk_final']:.4f} (LM at that c_b: "
                 f"{k['langmuir_mclean_final']:.4f}); max |ΔΣc| {k['sum_c_max_change']:.2e}; "
                 f"F change {k['free_energy_change']:.4f} eV (largest rise {k['free_energy_max_increase']:.2e})")
    lines.append(time_line(summary, output))
    return "\n".join(lines)
