r"""Mg around an edge dislocation in Al–Mg: a Cottrell atmosphere by DMD (seed "DMD" examples).

``dmdjax alloy dislocation`` builds a straight a/2[1̄10](111) edge dislocation in fcc Al with
matscipy (:class:`matscipy.dislocation.FCCEdge110Dislocation`: the anisotropic linear-elastic
(Stroh) displacement field, with the potential's own elastic constants, fitted by matscipy at
the run's lattice parameter), in a cylinder of radius ``radius`` around the core, periodic
along the line. Axes (matscipy's): x = [1̄10] ∥ b, y = [111] (glide-plane normal), z = [1̄1̄2]
(the line; one period is a√6/2 = 5.03 Å at a = 4.108 Å, repeated ``length`` times). The
outer shell of width ``boundary_width`` (at least the potential's cut-off) is clamped in X
(at the elastic solution) and in species (at the nominal composition), so no mobile site
feels the free surface of the cylinder. DMD then relaxes (X, k) at the nominal composition —
the core relaxes — and Mg redistributes under the master equation K3 (Arrhenius rates
ν e^{−βQ} e^{∓βΔμ^ex}, ``relax_at="interval"`` of :func:`dmdjax.dmd.run`), as in the surface
study. Σc is conserved over the mobile sites.

Pressure beside the concentration: p = −B tr ε of the elastic field that built the
dislocation (tr ε by central differences of matscipy's displacement, 10⁻⁴ Å), B = (C₁₁ +
2C₁₂)/3 — for cubic symmetry σ_kk = (C₁₁ + 2C₁₂) ε_kk exactly. Mg, the larger atom, should
gather where p < 0 (tensile, below the glide plane on the side without the extra half-plane)
and leave where p > 0. In the dilute far field Cottrell's law c/(1 − c) ∝ exp(−pΔV/k_BT)
holds with the solute's misfit volume ΔV; the study fits ΔV from c and p outside the core
(``core_radius``) and reports it.

Concentrations are averaged over each atomic column along the line (the ``length`` images of
one site), which is what the maps show.

Outputs (``--output``, default ``alloy-dislocation/``): ``trajectory.npz`` (the DMD run and its
checkpoint: ``--resume`` continues it), ``frames.extxyz`` (per-atom ``c``, ``k``,
``site_free_energy``, ``pressure_elastic`` and ``pressure_relaxed`` (GPa; see
:func:`relaxed_pressure`), ``clamped``; per frame ``time``, ``time_rate_units``,
``total_free_energy``), ``maps.npz`` (column positions relative to the core, column c vs time,
column elastic and relaxed pressure, clamped flag), ``profiles.npz`` (c and p vs angle around the core and vs y
across the glide plane; c on the tensile / neutral / compressive sites vs time), ``run.json``,
``summary.json`` (keys in :func:`run_dislocation_study`) and ``fig_dislocation.png``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from .. import io
from ..progress import logger
from ..free_energy import VGFreeEnergy
from ..neighbors import neighbor_list
from ..potentials import resolve_potential_path
from ..systems import System, from_ase
from ..state import DMDState
from ..units import thermal_energy
from .alloy import (SPECIES, arrhenius_rate, check_checkpoint, conservation, group_means, load_alloy_potential,
                     mg_fraction, run_kinetics, save_times, summary_header, time_line, uniform_order_parameter,
                     validate_parameters, write_frames)

EV_PER_A3_PER_GPA = 1.0 / 160.21766208  # 1 GPa in eV/Å³
NEIGHBOR_SKIN = 0.5  # Å


@dataclasses.dataclass(frozen=True)
class DislocationParameters:
    """Parameters of the dislocation study (defaults: a CPU-sized cylinder, 1452 atoms).

    Attributes:
        radius: Å, the cylinder around the core; ``boundary_width``: Å, its clamped outer
            shell (≥ the potential's cut-off); mobile sites lie within radius − boundary_width.
        length: periods of the line (5.03 Å each at a = 4.108 Å); ≥ 4 for the 7.5 Å cut-off.
        concentration: nominal Mg fraction. temperature: K. attempt_frequency: ν per unit time (per ``time_unit``: "s", "ps", ...
            or "", the run's own unit; every time of the run is in that unit);
            activation_energy: Q, eV. lattice_constant: Å. kinetic_cutoff: exchange bond, Å
            (first-neighbour exchanges).
        t_end, t_first: in units of 1/Γ₀ (Γ₀ = ν e^{−βQ}); ``n_outputs`` output times,
            log-spaced from t_first to t_end after t = 0.
        pressure_threshold: GPa; sites with p < −threshold are "tensile", p > threshold
            "compressive", the rest "neutral".
        core_radius: Å; columns closer to the core are left out of the Cottrell fit.
        potential: a bundled potential name or an EAM file with species Al and Mg.
        rtol, atol: ODE tolerances; max_steps: solver steps per output interval.
    """

    radius: float = 20.0
    boundary_width: float = 8.0
    length: int = 4
    concentration: float = 0.05
    temperature: float = 600.0
    attempt_frequency: float = 10.0
    time_unit: str = ""
    activation_energy: float = 0.77
    lattice_constant: float = 4.108
    kinetic_cutoff: float = 3.5
    t_end: float = 30.0
    t_first: float = 0.03
    n_outputs: int = 10
    pressure_threshold: float = 0.5
    core_radius: float = 6.0
    potential: str = "AlMg_Mendelev2009"
    rtol: float = 1e-6
    atol: float = 1e-8
    max_steps: int = 100_000

    def __post_init__(self):
        validate_parameters(self, ("radius", "boundary_width", "pressure_threshold", "core_radius"))
        if self.radius - self.boundary_width < 4.0:
            raise ValueError(f"radius ({self.radius} Å) must exceed boundary_width ({self.boundary_width} Å) by at "
                             "least 4 Å: the mobile region would hold no more than the core")
        if int(self.length) != self.length or self.length < 1:
            raise ValueError(f"length must be a positive integer (periods of the line); got {self.length!r}")

    @classmethod
    def quick(cls) -> "DislocationParameters":
        """A small, short study for tests and a first look (R = 16 Å, Γ₀t ≤ 1)."""
        return cls(radius=16.0, t_end=1.0, t_first=0.1, n_outputs=3)

    @property
    def rate(self) -> float:
        """Γ₀ = ν e^{−Q/k_BT}, per unit time."""
        return arrhenius_rate(self)

    def save_times(self) -> np.ndarray:
        """0 and ``n_outputs − 1`` log-spaced times, in the run's time unit."""
        return save_times(self)


def elastic_constants(potential: str, lattice_constant: float) -> dict:
    """C₁₁, C₁₂, C₄₄ (GPa) of fcc Al of ``potential`` at ``lattice_constant`` (T = 0 energy),
    fitted by matscipy (:func:`matscipy.elasticity.fit_elastic_constants`, its EAM calculator)."""
    from ase.build import bulk
    from ase.units import GPa
    from matscipy.calculators.eam import EAM
    from matscipy.elasticity import fit_elastic_constants

    path = resolve_potential_path(potential)
    kind = {".fs": "eam/fs", ".alloy": "eam/alloy", ".setfl": "eam/alloy"}.get(path.suffix.lower(), "eam")
    atoms = bulk("Al", "fcc", a=lattice_constant, cubic=True) * (2, 2, 2)
    atoms.calc = EAM(str(path), kind=kind)
    stiffness, _ = fit_elastic_constants(atoms, symmetry="cubic", verbose=False, optimizer=None)
    stiffness = np.asarray(stiffness) / GPa
    return {"C11": float(stiffness[0, 0]), "C12": float(stiffness[0, 1]), "C44": float(stiffness[3, 3])}


@dataclasses.dataclass(frozen=True)
class Cylinder:
    """The built dislocation: ``system`` (clamped shell pinned), ``bulk_positions`` (the perfect
    crystal it was displaced from, Å), ``core`` (x, y of the core, Å), ``column`` (each atom's
    column along the line), ``pressure`` (elastic p per atom, GPa), ``burgers`` (Å)."""

    system: System
    bulk_positions: np.ndarray
    core: np.ndarray
    column: np.ndarray
    pressure: np.ndarray
    burgers: np.ndarray


def build_cylinder(p: DislocationParameters, constants: dict, species_names=SPECIES) -> Cylinder:
    """The edge dislocation cylinder of ``p`` (matscipy), its clamped shell and elastic pressure."""
    from matscipy.dislocation import FCCEdge110Dislocation

    dislocation = FCCEdge110Dislocation(p.lattice_constant, constants["C11"], constants["C12"], constants["C44"],
                                        symbol="Al")
    with warnings.catch_warnings():  # matscipy warns about its own numerical details
        warnings.simplefilter("ignore")
        bulk, disloc = dislocation.build_cylinder(p.radius, fix_width=p.boundary_width, method="adsl", verbose=False)
        core = np.array(disloc.info["core_positions"][0])
        pressure = elastic_pressure(dislocation, bulk.positions, core, constants)
    unit = len(disloc)
    disloc, bulk = disloc.repeat((1, 1, p.length)), bulk.repeat((1, 1, p.length))
    disloc.pbc = (False, False, True)  # the cylinder: free across, periodic along the line
    system = from_ase(disloc, species_names=species_names)  # matscipy's FixAtoms shell → pinned
    return Cylinder(system, np.asarray(bulk.positions), core[:2], np.arange(len(disloc)) % unit,
                    np.tile(pressure, p.length), np.asarray(dislocation.burgers))


def elastic_pressure(dislocation, positions, core, constants: dict, step: float = 1e-4) -> np.ndarray:
    """p = −(C₁₁ + 2C₁₂)/3 · tr ε (GPa) of the dislocation's elastic field at ``positions`` (the
    bulk sites), tr ε = ∂u_x/∂x + ∂u_y/∂y by central differences of matscipy's displacement."""
    # FCCEdge110Dislocation is matscipy's dissociated class: the full dislocation is its two Shockley
    # partials at one core (partial_distance=0 in build_cylinder), so the core is given twice.
    cores = np.stack([core, core])

    def displacement(x):
        return dislocation.displacements(x, cores, self_consistent=False, method="adsl", verbose=False)

    trace = np.zeros(len(positions))
    for axis in (0, 1):
        shift = np.zeros(3)
        shift[axis] = step
        trace += (displacement(positions + shift)[:, axis] - displacement(positions - shift)[:, axis]) / (2 * step)
    return -(constants["C11"] + 2 * constants["C12"]) / 3.0 * trace


def relaxed_pressure(positions, cell, lattice_constant: float, bulk_modulus: float) -> np.ndarray:
    """p ≈ −B tr ε (GPa) per atom from a structure itself: tr ε ≈ 3(d̄/d₀ − 1), with d̄ the mean
    distance to the atom's first-shell neighbours (closer than (1/√2 + 1)a/2) and d₀ = a/√2 — the
    average of r̂·ε·r̂ over the 12 ⟨110⟩ bonds of fcc is tr ε/3. An atomistic check on
    :func:`elastic_pressure` (NaN for atoms without neighbours)."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    positions = np.asarray(positions)
    atoms = Atoms(f"Al{len(positions)}", positions=positions, cell=np.asarray(cell.vectors), pbc=cell.pbc)
    cutoff = 0.5 * (lattice_constant / np.sqrt(2.0) + lattice_constant)  # between the first and second shells
    i, distance = ase_neighbor_list("id", atoms, cutoff)
    count = np.bincount(i, minlength=len(positions))
    mean = np.bincount(i, distance, len(positions)) / np.maximum(count, 1)
    return np.where(count > 0, -bulk_modulus * 3.0 * (mean * np.sqrt(2.0) / lattice_constant - 1.0), np.nan)


def mean_field_misfit_volume(potential, p: DislocationParameters, bulk_modulus: float, strain: float = 0.005) -> float:
    """The misfit volume ΔV (Å³) of Mg in DMD's own mean field — the oracle of :func:`cottrell_fit`.

    A periodic 4 × 4 × 4-cell crystal at the nominal composition is strained hydrostatically
    by ±``strain`` and relaxed: by symmetry the relaxed X are the lattice sites and k is one
    value, so the relaxation is a minimisation of F over that value (scipy's bounded Brent).
    With c/(1 − c) ∝ e^{2βμ^ex} (s = −1 is Mg, μ^ex = ∂F/∂s) and p = −3Bε,
    ΔV = −k_BT ∂ln[c/(1 − c)]/∂p = 2 ∂μ^ex/∂(3Bε).
    """
    import jax
    from scipy.optimize import minimize_scalar

    from ..systems import fcc

    excess = []
    for sign in (-1.0, 1.0):
        crystal = fcc(p.lattice_constant * (1.0 + sign * strain), (5, 5, 5), "Al")  # holds k >= 0.5 reach
        vg = VGFreeEnergy(potential, crystal.cell, p.temperature, crystal.n_atoms, species=SPECIES)
        s = uniform_order_parameter(p.concentration, crystal.n_atoms, crystal.positions.dtype)

        def uniform(k):
            return jnp.full(crystal.n_atoms, k, crystal.positions.dtype)

        # The list covers the Gaussians' reach for every k the search visits (k >= softest).
        softest = 0.5
        neighbors = vg.neighbor_list(crystal.positions, uniform(softest), skin=NEIGHBOR_SKIN, margin=1.0)
        free_energy = jax.jit(lambda k: vg(DMDState(crystal.positions, uniform(k), s), neighbors))
        best = minimize_scalar(lambda k: float(free_energy(k)), bounds=(softest, 50.0), method="bounded",
                               options={"xatol": 1e-10})
        if best.x < 1.01 * softest:
            raise RuntimeError(f"misfit reference: the uniform stiffness reached the search bound {softest} eV/Å²")
        excess.append(float(jnp.mean(vg.excess_chemical_potential(DMDState(crystal.positions, uniform(best.x), s),
                                                                   neighbors))))
    per_gpa = 2.0 * (excess[1] - excess[0]) / (3.0 * bulk_modulus * 2.0 * strain)  # eV/GPa
    return per_gpa / EV_PER_A3_PER_GPA


def cottrell_fit(c, pressure, mean: float, temperature: float) -> dict:
    """Fit ln[c/(1 − c)] − ln[c̄/(1 − c̄)] = −pΔV/k_BT + b over columns (least squares).

    Returns ``misfit_volume`` ΔV (Å³), ``intercept`` b and ``correlation`` (Pearson r of the
    log-odds and p); ``pressure`` in GPa.
    """
    c, pressure = np.asarray(c), np.asarray(pressure)
    log_odds = np.log(c / (1 - c)) - np.log(mean / (1 - mean))
    slope, intercept = np.polyfit(pressure * EV_PER_A3_PER_GPA, log_odds, 1)
    return {"misfit_volume": float(-slope * thermal_energy(temperature)), "intercept": float(intercept),
            "correlation": float(np.corrcoef(pressure, log_odds)[0, 1])}


def sector_means(c, pressure, mobile: np.ndarray, threshold: float) -> dict:
    """Mean c (…, columns) over mobile columns with p < −threshold (``tensile``), p > threshold
    (``compressive``), the rest (``neutral``) and all mobile (``mobile``)."""
    c = np.asarray(c)
    masks = {"tensile": mobile & (pressure < -threshold), "compressive": mobile & (pressure > threshold),
             "neutral": mobile & (np.abs(pressure) <= threshold), "mobile": mobile}
    return {name: c[..., mask].mean(axis=-1) for name, mask in masks.items()}


def angular_profile(values, relative: np.ndarray, mask: np.ndarray, n_sectors: int = 16):
    """Means of ``values`` (…, columns) over ``n_sectors`` angular sectors of the masked columns
    (angle from +x, the Burgers vector, counter-clockwise) → (centres in degrees, (…, n_sectors))."""
    angle = np.degrees(np.arctan2(relative[:, 1], relative[:, 0])) % 360.0
    edges = np.linspace(0.0, 360.0, n_sectors + 1)
    sector = np.minimum(np.digitize(angle, edges) - 1, n_sectors - 1)
    values = np.asarray(values)
    means = np.stack([values[..., mask & (sector == k)].mean(axis=-1) if np.any(mask & (sector == k))
                      else np.full(values.shape[:-1], np.nan) for k in range(n_sectors)], axis=-1)
    return 0.5 * (edges[1:] + edges[:-1]), means


def run_dislocation_study(p: DislocationParameters, output, *, resume: bool = False, overwrite: bool = False,
                          progress: bool = True, log=logger.info) -> dict:
    """Build, relax and run the study; write every file and return the summary.

    ``summary.json`` keys: ``device``, ``platform``, ``dtype``, ``devices`` (1), ``processes``; ``n_atoms``, ``n_mobile``
    (unclamped atoms), ``n_columns``, ``radius``, ``boundary_width``, ``length`` (periods),
    ``line_length`` (Å); ``elastic_constants_gpa`` (``C11``, ``C12``, ``C44``, ``bulk_modulus``);
    ``burgers`` (Å); ``wall_time_s`` (``build``, ``kinetics``, ``total``); ``rate`` Γ₀;
    ``time_reached`` (run units), ``time_reached_rate_units`` (Γ₀t); ``initial_relaxation``:
    ``max_displacement`` (Å, relaxed vs built X); ``pressure_check``: the elastic pressure
    against the one measured on the structure (:func:`relaxed_pressure`) on the ``columns``
    beyond ``core_radius``, as ``built`` (matscipy's positions: checks the elastic pressure)
    and ``relaxed`` (DMD's (X, k) at t = 0: how far the relaxed core's field departs from
    linear elasticity), each ``correlation`` and ``slope`` (measured per elastic);
    ``mean_field_misfit_volume`` (Å³, :func:`mean_field_misfit_volume`: what the Cottrell fit
    approaches near equilibrium); ``kinetics``: ``tensile_final``,
    ``compressive_final``, ``neutral_final``, ``mobile_mean`` (column-mean c on those sites at
    the end), ``tensile_enrichment`` and ``compressive_depletion`` (the first two over the
    nominal c), ``max_column_c`` (with ``max_column_distance`` Å from the core and
    ``max_column_pressure`` GPa), ``cottrell`` (:func:`cottrell_fit` at the end, columns beyond
    ``core_radius``), ``sum_c_max_change``, ``free_energy_max_increase``,
    ``free_energy_change`` (eV), ``resumed_from`` (outputs already in the checkpoint).

    Raises:
        FileExistsError: ``output`` holds files and neither ``resume`` nor ``overwrite`` is set.
        ValueError: a boundary narrower than the potential's cut-off, or a line shorter
            than the periodic minimum image allows.
    """
    output = Path(output)
    potential = load_alloy_potential(p.potential)
    if p.boundary_width < potential.cutoff:
        raise ValueError(f"boundary_width ({p.boundary_width} Å) must be at least the potential's cut-off "
                         f"({potential.cutoff} Å): mobile sites would feel the cylinder's free surface")
    period = p.lattice_constant * np.sqrt(6.0) / 2.0
    if p.length * period < 2.0 * (potential.cutoff + NEIGHBOR_SKIN):
        shortest = int(np.ceil(2.0 * (potential.cutoff + NEIGHBOR_SKIN) / period))
        raise ValueError(f"length ({p.length} periods = {p.length * period:.2f} Å) is too short for the "
                         f"cut-off {potential.cutoff} Å + skin {NEIGHBOR_SKIN} Å: use length >= {shortest}")
    run = io.open_study_folder(output, {"study": "alloy dislocation", "parameters": dataclasses.asdict(p),
                                        "rate": p.rate}, overwrite=overwrite, resume=resume)
    check_checkpoint(output, resume)
    start, walls = time.perf_counter(), {}

    constants = elastic_constants(p.potential, p.lattice_constant)
    constants["bulk_modulus"] = (constants["C11"] + 2 * constants["C12"]) / 3.0
    cylinder = build_cylinder(p, constants, potential.species)
    system = cylinder.system
    clamped = np.asarray(system.pinned)
    neighbors = neighbor_list(system.positions, system.cell, potential.cutoff, skin=NEIGHBOR_SKIN)
    vg = VGFreeEnergy(potential, system.cell, p.temperature, system.n_atoms, species=SPECIES, pinned=system.pinned,
                      pinned_species=system.pinned)
    misfit_volume = mean_field_misfit_volume(potential, p, constants["bulk_modulus"])
    walls["build"] = time.perf_counter() - start
    log(f"edge dislocation cylinder R = {p.radius:g} Å ({p.boundary_width:g} Å clamped), line {p.length} × "
        f"{period:.3f} Å: {system.n_atoms} atoms, {int((~clamped).sum())} mobile; C11, C12, C44 = "
        f"{constants['C11']:.1f}, {constants['C12']:.1f}, {constants['C44']:.1f} GPa; Γ₀ = {p.rate:.4g} per unit "
        f"time; {run['device']}, {run['dtype']}")

    tick = time.perf_counter()
    times = p.save_times()
    trajectory, resumed_from = run_kinetics(p, vg, system.positions, neighbors, output, resume=resume,
                                            overwrite=overwrite, progress=progress)
    walls["kinetics"] = time.perf_counter() - tick

    c = mg_fraction(trajectory.order_parameter)
    column_c = group_means(c, cylinder.column)
    column_pressure = group_means(cylinder.pressure, cylinder.column)
    atomistic = relaxed_pressure(trajectory.positions[0], system.cell, p.lattice_constant, constants["bulk_modulus"])
    column_relaxed = group_means(atomistic, cylinder.column)
    column_built = group_means(relaxed_pressure(system.positions, system.cell, p.lattice_constant,
                                                 constants["bulk_modulus"]), cylinder.column)
    relative = group_means(np.asarray(trajectory.positions)[-1, :, :2].T, cylinder.column).T - cylinder.core
    mobile = ~group_means(clamped, cylinder.column).astype(bool)
    distance = np.hypot(relative[:, 0], relative[:, 1])
    sectors = sector_means(column_c, column_pressure, mobile, p.pressure_threshold)
    annulus = mobile & (distance >= 0.5 * p.core_radius)
    angles, angular_c = angular_profile(column_c, relative, annulus)
    _, angular_p = angular_profile(column_pressure, relative, annulus)
    strip = mobile & (np.abs(relative[:, 0]) < 2.5)
    order = np.argsort(relative[strip, 1])
    io.save_npz(output / "maps.npz", {"time": np.asarray(trajectory.time), "time_rate_units": times * p.rate,
                                      "column_xy": relative, "column_c": column_c, "column_pressure": column_pressure,
                                      "column_relaxed_pressure": column_relaxed,
                                      "column_clamped": ~mobile})
    io.save_npz(output / "profiles.npz", {
        "time_rate_units": times * p.rate, "angle_degrees": angles, "angular_c": angular_c,
        "angular_pressure": angular_p, "strip_y": relative[strip, 1][order], "strip_c": column_c[:, strip][:, order],
        "strip_pressure": column_pressure[strip][order],
        **{f"{name}_c": values for name, values in sectors.items()}})
    write_frames(output / "frames.extxyz", vg, system, trajectory, neighbors, p.rate,
                 {"pressure_elastic": cylinder.pressure, "pressure_relaxed": atomistic,
                  "clamped": clamped.astype(int)})

    final = column_c[-1]
    top = int(np.argmax(np.where(mobile, final, -np.inf)))
    fit_columns = mobile & (distance >= p.core_radius)
    pressure_check = {"columns": int(fit_columns.sum())}
    for name, measured in (("built", column_built), ("relaxed", column_relaxed)):
        elastic, measured = column_pressure[fit_columns], measured[fit_columns]
        pressure_check[name] = {"correlation": float(np.corrcoef(elastic, measured)[0, 1]),
                                "slope": float(np.polyfit(elastic, measured, 1)[0])}
    kinetics = {"tensile_final": float(sectors["tensile"][-1]), "compressive_final": float(sectors["compressive"][-1]),
                "neutral_final": float(sectors["neutral"][-1]), "mobile_mean": float(sectors["mobile"][-1]),
                "tensile_enrichment": float(sectors["tensile"][-1] / p.concentration),
                "compressive_depletion": float(sectors["compressive"][-1] / p.concentration),
                "max_column_c": float(final[top]), "max_column_distance": float(distance[top]),
                "max_column_pressure": float(column_pressure[top]),
                "cottrell": cottrell_fit(final[fit_columns], column_pressure[fit_columns],
                                         float(sectors["mobile"][-1]), p.temperature),
                **conservation(c[:, ~clamped], trajectory.free_energy), "resumed_from": resumed_from}

    from . import dislocation_figures

    dislocation_figures.draw(output / "fig_dislocation.png", p, times * p.rate, relative, column_c,
                             column_pressure, mobile, sectors, angles, angular_c, angular_p,
                             relative[strip, 1][order], column_c[:, strip][:, order], column_pressure[strip][order])
    walls["total"] = time.perf_counter() - start
    summary = {**summary_header("alloy dislocation", run, walls, times, p.rate), "n_atoms": system.n_atoms,
               "n_mobile": int((~clamped).sum()), "n_columns": int(mobile.size), "radius": p.radius,
               "boundary_width": p.boundary_width, "length": p.length, "line_length": float(p.length * period),
               "elastic_constants_gpa": constants, "burgers": cylinder.burgers.tolist(),
               "initial_relaxation": {"max_displacement": float(np.max(np.linalg.norm(
                   np.asarray(trajectory.positions[0]) - np.asarray(system.positions), axis=-1)))},
               "pressure_check": pressure_check, "mean_field_misfit_volume": misfit_volume, "kinetics": kinetics}
    summary = io.write_study_summary(output, summary)
    log(format_summary(summary, output))
    return summary


def format_summary(summary: dict, output: Path) -> str:
    k = summary["kinetics"]
    return "\n".join([
        f"\nMg on the mobile sites at Γ₀t = {summary['time_reached_rate_units']:g} (column means): tensile "
        f"{k['tensile_final']:.4f} (× {k['tensile_enrichment']:.2f} nominal), neutral {k['neutral_final']:.4f}, "
        f"compressive {k['compressive_final']:.4f} (× {k['compressive_depletion']:.2f}); richest column "
        f"{k['max_column_c']:.3f} at {k['max_column_distance']:.1f} Å from the core (p = "
        f"{k['max_column_pressure']:+.2f} GPa)",
        "pressure beyond the core, measured on the structure vs elastic: " + ", ".join(
            f"{name} r = {check['correlation']:+.3f}, slope {check['slope']:.2f}"
            for name, check in summary["pressure_check"].items() if name != "columns")
        + f" ({summary['pressure_check']['columns']} columns)",
        f"Cottrell fit beyond the core: misfit volume {k['cottrell']['misfit_volume']:.2f} Å³ (r = "
        f"{k['cottrell']['correlation']:+.3f}; the mean field's own ΔV is "
        f"{summary['mean_field_misfit_volume']:.2f} Å³); max |ΔΣc| {k['sum_c_max_change']:.2e}; F change "
        f"{k['free_energy_change']:.4f} eV (largest rise {k['free_energy_max_increase']:.2e})",
        time_line(summary, output),
    ])
