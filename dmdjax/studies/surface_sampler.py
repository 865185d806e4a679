r"""Beyond the mean field in 3-D: the spin-diffusion sampler on the Al–Mg surface slab, against DMD.

``dmdjax alloy sampler`` runs the spin-diffusion model (:mod:`dmdjax.spin_diffusion`, seed
"Spin-Diffusion"; DESIGN.md §5) on the slab of the surface study (:mod:`dmdjax.studies.surface`:
fcc Al–Mg, Mendelev (2009) EAM, free along x with two (100) surfaces, periodic in y and z) and
compares it with DMD, the model's mean-field approximation, and with Langmuir–McLean.

The model: σ = ±1 on every site (σ = −1 Mg), Kawasaki exchange of first neighbours at the
seed's detailed-balance rates r_ij = τ⁻¹/(1 + e^{βΔ_ijV}), with the EAM swap energy Δ_ijV of
the current positions computed locally (the bonds of i, j and the densities of the sites within
the cut-off, O(M) per candidate); candidates drawn over the Mg sites' bonds only
(``candidates="minority"``, the same law). Positions follow by **joint** overdamped Langevin
dynamics (``mode="joint"``), chosen over the scale-separated Gaussian rate average because

* its stationary law is exactly the Boltzmann law e^{−βV(x,σ)} of the full model — positions,
  vibrations and the solute's own relaxation included — for any time-scale ratio ε (both parts
  of the generator satisfy detailed balance; the Leimkuhler–Matthews discretisation adds an
  O(h²) bias in x), so the equilibrium profiles are those of the model DMD approximates;
* each exchange needs only the local energy change at the current x, where the Gaussian average
  needs a VG relaxation of the whole slab after every accepted exchange (2–3 s at 1000 sites).

For the equilibrium profiles ε is large (``equilibrium_steps_per_tau`` Langevin steps per τ: the
law does not depend on it), and each Mg also attempts ``nonlocal_slots`` exchanges per τ with a
site drawn anywhere in the slab (``nonlocal_slots`` of :func:`dmdjax.spin_diffusion.spin_diffusion_sampler`:
the same detailed-balance acceptance, so the same stationary law, reached without diffusing
across the slab — not the kinetics); for the kinetics (local exchanges only) it is small enough that an atom's surroundings relax
between its exchanges (``kinetics_steps_per_tau``, ~7 steps of h per Mg exchange in the bulk at
6 %), the scale-separated limit the mean-field laws describe.

Time is in units of τ, with τ⁻¹ = Γ₀ = ν e^{−βQ} of the surface study (its Γ₀t axis). The
mean-field laws on that axis: K2, the mean-field spin-diffusion the sampler averages to (seed
eq. 36, gradient divided difference, τ), and K3, the master equation of the surface study (rates
Γ₀e^{∓βΔμ^ex}; in the dilute limit twice K2's, whose exchange rate at ΔV = 0 is 1/(2τ)).

Equilibrium at each nominal Mg fraction (the slab's Mg count fixed, K = round(cN)): half the
replicas start from random sites, half from the DMD equilibrium profile (K sites drawn with
weights c_DMD of their layer); after ``t_equilibrate`` the layer profile is averaged over
``t_average`` per replica, folded over the two surfaces; the standard error is over replicas.
Two checks that it no longer drifts: the first and second halves of the window agree, and so do
the two groups of starts (z-scores in ``summary.json``). DMD: the composition-constrained
minimum of F (:func:`dmdjax.dmd.equilibrium`, self-consistent, from the uniform state, as the
surface study's isotherm). Langmuir–McLean: c_l/(1 − c_l) = c_b/(1 − c_b)·e^{−E_l/k_BT} for the
surface (l = 0) and subsurface (l = 1) layers (E_l the relaxed molecular-statics segregation
energy of one Mg to layer l; 0 deeper), c_b fixed by the slab's Mg count, as in the sampler and DMD.

Outputs (``--output``, default ``alloy-sampler/``): ``statics.json``, ``equilibrium.npz`` (per
composition: ``nominal``, ``layer_c_sampler``, ``layer_c_sampler_error``, ``layer_c_dmd``, folded
layers 0 = surface …), ``equilibrium_records.npz`` (per composition the per-replica layer c at every
sample, (T, R, L)), ``kinetics.npz`` (``time`` τ, ``layer_c_sampler`` (T, L), its error,
``layer_c_k2``, ``layer_c_k3``), ``table.csv``, ``run.json``, ``summary.json`` (keys in
:func:`run_sampler_study`) and ``fig_sampler.png``.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from pathlib import Path

import jax
import numpy as np

from .. import dmd, io
from .. import spin_diffusion as sd
from ..free_energy import VGFreeEnergy
from ..neighbors import neighbor_list
from ..progress import logger, track
from ..units import beta_from_temperature
from .alloy import SPECIES, group_means, load_alloy_potential, mg_fraction, \
    uniform_order_parameter
from .surface import MIN_CROSS_SECTION, SurfaceParameters, build_slab, layer_relaxed_start, layer_slab, \
    segregation_energies


@dataclasses.dataclass(frozen=True)
class SamplerStudyParameters:
    """Parameters of the sampler study (defaults: the surface study's slab, CPU-sized).

    Attributes:
        cells: cubic cells (x free, y and z periodic, at least 5: the surface study's rule).
        concentrations: nominal Mg fractions of the equilibrium profiles.
        temperature: K. lattice_constant: Å. kinetic_cutoff: exchange bond length, Å (first
            neighbours). potential: a bundled name or an EAM file with Al and Mg.
        replicas: R, independent replicas (vmapped; an even number: half start random, half
            from the DMD profile).
        langevin_step: h, the fast Langevin step (Å²/eV of fast time; stable for h·λ_max < 2,
            λ_max ≈ 10 eV/Å² for Al).
        skin: neighbour-list skin, Å; an atom may move skin/2 from its start (the run stops
            with an error otherwise).
        t_equilibrate, t_average: τ discarded, then averaged over (``n_samples`` samples).
        equilibrium_steps_per_tau: Langevin steps per τ in the equilibrium runs (ε = 1/(that·h)).
        nonlocal_slots: in the equilibrium runs only, each Mg also attempts this many exchanges
            per τ with a site drawn anywhere in the slab (same detailed-balance acceptance: the
            stationary law is unchanged, the time to reach it is not the kinetics); 0 turns them off.
        kinetics_concentration: nominal Mg fraction of the kinetic comparison; t_end, t_first,
            n_outputs: its log-spaced output times in τ; kinetics_steps_per_tau: its Langevin
            steps per τ.
        seed: PRNG seed. rtol, atol: the DMD runs' ODE tolerances.
    """

    cells: tuple = (10, 5, 5)
    concentrations: tuple = (0.005, 0.02, 0.06)
    temperature: float = 600.0
    lattice_constant: float = 4.108
    kinetic_cutoff: float = 3.5
    potential: str = "AlMg_Mendelev2009"
    replicas: int = 8
    langevin_step: float = 0.05
    skin: float = 2.5
    t_equilibrate: float = 20.0
    t_average: float = 40.0
    n_samples: int = 40
    equilibrium_steps_per_tau: float = 10.0
    nonlocal_slots: int = 12
    kinetics_concentration: float = 0.06
    t_end: float = 30.0
    t_first: float = 0.03
    n_outputs: int = 12
    kinetics_steps_per_tau: float = 40.0
    seed: int = 0
    rtol: float = 1e-6
    atol: float = 1e-8

    def __post_init__(self):
        cells = tuple(int(c) for c in self.cells)
        if len(cells) != 3 or cells[0] < 3 or min(cells[1:]) < MIN_CROSS_SECTION:
            raise ValueError(f"cells must be (nx >= 3, ny >= {MIN_CROSS_SECTION}, nz >= {MIN_CROSS_SECTION}) "
                             f"cubic cells; got {self.cells!r}")
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "concentrations", tuple(float(c) for c in self.concentrations))
        if not self.concentrations:
            raise ValueError("concentrations needs at least one nominal Mg fraction")
        for name, value in [(f"concentrations[{i}]", c) for i, c in enumerate(self.concentrations)] + [
                ("kinetics_concentration", self.kinetics_concentration)]:
            if not 0 < value < 0.5:
                raise ValueError(f"{name} must lie in (0, 0.5) (Mg the minority species); got {value!r}")
        for name in ("temperature", "lattice_constant", "kinetic_cutoff", "langevin_step", "skin", "t_equilibrate",
                     "t_average", "equilibrium_steps_per_tau", "t_end", "t_first", "kinetics_steps_per_tau",
                     "rtol", "atol"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
        for name, least in (("replicas", 2), ("n_samples", 4), ("n_outputs", 2), ("nonlocal_slots", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= least):
                raise ValueError(f"{name} must be an integer >= {least}; got {value!r}")
        if self.replicas % 2:
            raise ValueError(f"replicas must be even (half start random, half from DMD); got {self.replicas}")
        if self.t_first >= self.t_end:
            raise ValueError(f"t_first ({self.t_first}) must be below t_end ({self.t_end})")

    @classmethod
    def quick(cls) -> "SamplerStudyParameters":
        """A small, short study for tests and a first look (4 × 5 × 5 cells, 2 compositions)."""
        return cls(cells=(4, 5, 5), concentrations=(0.02, 0.06), replicas=4, t_equilibrate=2.0, t_average=4.0,
                   n_samples=8, equilibrium_steps_per_tau=5.0, kinetics_concentration=0.06, t_end=2.0,
                   t_first=0.1, n_outputs=4, kinetics_steps_per_tau=10.0)

    def save_times(self) -> np.ndarray:
        """0 and ``n_outputs − 1`` log-spaced kinetic output times (τ)."""
        return np.concatenate([[0.0], np.geomspace(self.t_first, self.t_end, self.n_outputs - 1)])

    def sample_times(self) -> np.ndarray:
        """0, the end of equilibration, then ``n_samples`` evenly spaced samples (τ)."""
        window = self.t_equilibrate + np.arange(1, self.n_samples + 1) * (self.t_average / self.n_samples)
        return np.concatenate([[0.0, self.t_equilibrate], window])


def fold(layer_values: np.ndarray) -> np.ndarray:
    """Average the layers l and L − 1 − l (the two surfaces of the slab): (..., L) → (..., ⌈L/2⌉)."""
    half = (layer_values.shape[-1] + 1) // 2
    return 0.5 * (layer_values[..., :half] + layer_values[..., ::-1][..., :half])


def langmuir_mclean_profile(n_mg: int, n_layers: int, sites_per_layer: int, energies, temperature: float):
    """Layer-resolved Langmuir–McLean at a fixed Mg count: c_l/(1 − c_l) = c_b/(1 − c_b)·e^{−E_l/k_BT}
    on the folded layers (``energies`` E_l for the outer layers, 0 beyond), with c_b fixed by
    Σ_l c_l × sites = ``n_mg`` over the slab's ``n_layers`` layers. Returns the folded profile."""
    half = (n_layers + 1) // 2
    e = np.zeros(half)
    e[: len(energies)] = energies
    weight = np.exp(-e * float(beta_from_temperature(temperature)))

    def profile(bulk):
        ratio = bulk / (1.0 - bulk) * weight
        return ratio / (1.0 + ratio)

    low, high = 1e-300, 1.0 - 1e-15  # Σ c(c_b) rises monotonically from 0 to the slab's size
    for _ in range(200):
        middle = np.sqrt(low * high) if high < 0.5 else 0.5 * (low + high)
        total = 2.0 * sites_per_layer * profile(middle).sum()
        low, high = (middle, high) if total < n_mg else (low, middle)
    return profile(0.5 * (low + high))


def segregation_free_energy(surface: float, bulk: float, temperature: float) -> float:
    """ΔG = −k_BT ln[c_s(1 − c_b) / (c_b(1 − c_s))] (eV): the surface layer's segregation free
    energy that Langmuir–McLean would need to give this pair (E_seg itself for the isotherm;
    NaN where c_b or c_s is 0 or 1)."""
    if not (0 < surface < 1 and 0 < bulk < 1):
        return float("nan")
    return float(-np.log(surface * (1 - bulk) / (bulk * (1 - surface))) / beta_from_temperature(temperature))


def profile_spins(rng: np.random.Generator, n_mg: int, site_c: np.ndarray) -> np.ndarray:
    """σ with ``n_mg`` Mg sites drawn without replacement with weights ``site_c`` (N,)."""
    spins = np.ones(site_c.shape[0])
    spins[rng.choice(site_c.shape[0], n_mg, replace=False, p=site_c / site_c.sum())] = -1.0
    return spins


def _sampler(p: SamplerStudyParameters, potential, slab, positions, n_mg: int, steps_per_tau: float,
             nonlocal_slots: int = 0):
    neighbors = neighbor_list(positions, slab.cell, potential.cutoff, skin=p.skin)
    return sd.spin_diffusion_sampler(
        potential, positions, slab.cell, neighbors, temperature=p.temperature, tau=1.0,
        kinetic_cutoff=p.kinetic_cutoff, mode="joint", epsilon=1.0 / (steps_per_tau * p.langevin_step),
        langevin_step=p.langevin_step, candidates="minority", minority_sites=n_mg, nonlocal_slots=nonlocal_slots)


def _layer_records(sampler, key, spins, times, layers, n_replicas, progress, label):
    """Per-replica layer Mg fractions (T, R, L) at ``times``, and the run's candidate and
    accepted counts (summed over replicas)."""
    records, states = [], None
    for _, states in sd.replica_states(sampler, key, spins, times, n_replicas=n_replicas, progress=progress,
                                       label=label):
        records.append(group_means(mg_fraction(np.asarray(states.spins)), layers))
    return np.stack(records), int(np.asarray(states.candidates).sum()), int(np.asarray(states.accepted).sum())


DMD_TOLERANCE = 2e-5
"""eV, on max |μ_i − λ| of DMD's constrained minimum (a relative error of c below β·2e-5 ≈ 4e-4 at
600 K); reported per composition as ``dmd_residual_ev``."""

DRIFT_Z_LIMIT = 3.0
"""|drift_z| or |start_z| at or above this marks a composition ``equilibrated: false`` (and warns)."""

BULK_FROM = 3
"""The folded layers from this one on are the slab's 'bulk' (c_b: their mean), beyond the reach of
the surface's segregation energies (E_0, E_1) and its relaxation."""


def interior_mean(folded: np.ndarray) -> np.ndarray:
    """c_b: the mean over the folded layers from :data:`BULK_FROM` on (all but the last one
    where the slab is thinner)."""
    return folded[..., min(BULK_FROM, folded.shape[-1] - 1):].mean(axis=-1)


def equilibrium_statistics(records: np.ndarray, n_equilibrate: int) -> dict:
    """Time averages over the samples after ``n_equilibrate`` of folded per-replica profiles
    (T, R, L): ``mean`` and ``error`` (replica standard error) per folded layer, ``bulk`` and
    ``bulk_error`` (:func:`interior_mean`), and the drift checks on the surface layer:
    ``drift_z`` (second half of the window minus the first, over its replica standard error)
    and ``start_z`` (random starts minus DMD starts, the first half of the replicas against
    the second)."""
    window = fold(records[n_equilibrate:])  # (T', R, L')
    per_replica = window.mean(axis=0)
    n_replicas = per_replica.shape[0]
    bulk = interior_mean(per_replica)
    half = window.shape[0] // 2
    drift = window[half:].mean(axis=0)[:, 0] - window[:half].mean(axis=0)[:, 0]
    first, second = per_replica[: n_replicas // 2, 0], per_replica[n_replicas // 2:, 0]
    start_error = np.hypot(first.std(ddof=1) / np.sqrt(first.size), second.std(ddof=1) / np.sqrt(second.size))
    return {"mean": per_replica.mean(axis=0), "error": per_replica.std(axis=0, ddof=1) / np.sqrt(n_replicas),
            "bulk": float(bulk.mean()), "bulk_error": float(bulk.std(ddof=1) / np.sqrt(n_replicas)),
            "drift_z": float(drift.mean() / (drift.std(ddof=1) / np.sqrt(n_replicas) + 1e-300)),
            "start_z": float((first.mean() - second.mean()) / (start_error + 1e-300))}


def run_sampler_study(p: SamplerStudyParameters, output, *, overwrite: bool = False, progress: bool = True,
                      log=logger.info) -> dict:
    """Run the study (statics, equilibria, kinetics), write every file, and return the summary.

    ``summary.json`` keys: ``study``, ``device``, ``platform``, ``dtype``, ``n_atoms``, ``cells``,
    ``n_layers``, ``replicas``; ``wall_time_s`` (``statics``, ``equilibrium``, ``kinetics``,
    ``total``); ``segregation_energy_ev`` {``surface``, ``subsurface``} (relaxed statics);
    ``equilibrium``: per composition ``nominal``, ``n_mg``, ``bulk`` (sampler c_b, the mean of the
    folded layers from :data:`BULK_FROM` on, with ``bulk_error``) and ``bulk_dmd``, ``bulk_lm``, ``surface`` / ``subsurface`` (sampler c with ``*_error``),
    ``surface_dmd`` / ``subsurface_dmd``, ``surface_lm`` / ``subsurface_lm`` (layer-resolved
    Langmuir–McLean at the same Mg count, :func:`langmuir_mclean_profile`),
    ``ratio_dmd_sampler`` (surface layer), ``segregation_free_energy`` / ``_dmd`` / ``_lm``
    (:func:`segregation_free_energy` of each pair c_s, c_b, eV), ``drift_z``, ``start_z``,
    ``equilibrated`` (both below :data:`DRIFT_Z_LIMIT` in magnitude), ``accepted_fraction``,
    ``candidates_per_s`` (replica-candidates per wall second of the run) and ``wall_s``;
    ``kinetics``: ``concentration``, ``n_mg``, ``time_reached`` (τ), surface-layer c at the end for
    the sampler (with error), K2 and K3, and ``candidates_per_s``.

    Raises:
        FileExistsError: ``output`` holds files and ``overwrite`` is not set.
    """
    output = Path(output)
    potential = load_alloy_potential(p.potential)
    run = io.open_study_folder(output, {"study": "alloy sampler", "parameters": dataclasses.asdict(p)},
                               overwrite=overwrite)
    start, walls = time.perf_counter(), {}
    slab, layers = build_slab(_surface_parameters(p))
    n_layers = int(layers.max()) + 1
    dtype = slab.positions.dtype
    vg_neighbors = neighbor_list(slab.positions, slab.cell, potential.cutoff, skin=0.5)
    vg = VGFreeEnergy(potential, slab.cell, p.temperature, slab.n_atoms, species=SPECIES)
    # The layer-uniform DMD equilibria and relaxed starts on the smallest cross-section (as the
    # surface study's isotherm): the same per-site state at any periodic cross-section.
    thin = _Thin(*layer_slab(_surface_parameters(p)), potential, p.temperature)
    log(f"slab {p.cells[0]}×{p.cells[1]}×{p.cells[2]} cells, {slab.n_atoms} atoms, {n_layers} layers; "
        f"{p.replicas} replicas; {run['device']}, {run['dtype']}")

    tick = time.perf_counter()
    energies = segregation_energies(potential, slab, layers, vg_neighbors, deeper_layers=(1,))
    segregation = {"surface": energies["relaxed"], "subsurface": energies["relaxed_layers"][1]}
    io.write_json(output / "statics.json", segregation)
    walls["statics"] = time.perf_counter() - tick
    log("relaxed E_seg (eV): surface {surface:+.4f}, subsurface {subsurface:+.4f}".format(**segregation))

    tick = time.perf_counter()
    key = jax.random.key(p.seed)
    rng = np.random.default_rng(p.seed)
    rows, arrays, records = [], {"nominal": [], "layer_c_sampler": [], "layer_c_sampler_error": [],
                                 "layer_c_dmd": []}, {}
    times = p.sample_times()
    # At 6 % the self-consistent iteration stalls at max |μ_i − λ| ≈ 9e-6 eV on the default slab (the
    # layer-uniform state is near a saddle, docs/alloy.md): 2e-5 eV moves c by < β·2e-5 ≈ 4e-4 of itself.
    tolerance = max(DMD_TOLERANCE, dmd.default_equilibrium_tolerance(dtype))
    for nominal in p.concentrations:
        n_mg = int(round(nominal * slab.n_atoms))
        if n_mg < 1:
            raise ValueError(f"nominal Mg fraction {nominal} is below one Mg atom in {slab.n_atoms} sites")
        s = uniform_order_parameter(n_mg / slab.n_atoms, thin.system.n_atoms, dtype)
        equilibrium = dmd.equilibrium(thin.vg, thin.vg.initial_state(thin.system.positions, s, thin.neighbors),
                                      thin.neighbors, method="self-consistent", tolerance=tolerance, max_steps=200)
        layer_c = group_means(mg_fraction(equilibrium.state.order_parameter), thin.layers)
        site_c = layer_c[layers]  # the full slab's sites
        layer_dmd = fold(layer_c)
        relaxed = thin.start(slab, layers, n_mg / slab.n_atoms)
        sampler = _sampler(p, potential, slab, relaxed.positions, n_mg, p.equilibrium_steps_per_tau,
                           p.nonlocal_slots)
        half = p.replicas // 2
        spins = np.stack([profile_spins(rng, n_mg, np.ones(slab.n_atoms)) for _ in range(half)]
                         + [profile_spins(rng, n_mg, np.asarray(site_c)) for _ in range(half)])
        key, sub = jax.random.split(key)
        run_start = time.perf_counter()
        record, candidates, accepted = _layer_records(sampler, sub, spins, times, layers, p.replicas, progress,
                                                      f"equilibrium at c = {nominal:g}")
        wall = time.perf_counter() - run_start
        statistics = equilibrium_statistics(record, 2)
        bulk = statistics["bulk"]
        lm = langmuir_mclean_profile(n_mg, n_layers, slab.n_atoms // n_layers,
                                     (segregation["surface"], segregation["subsurface"]), p.temperature)
        row = {"nominal": nominal, "n_mg": n_mg, "bulk": bulk, "bulk_error": statistics["bulk_error"],
               "bulk_dmd": float(interior_mean(layer_dmd)),
               "surface": float(statistics["mean"][0]), "surface_error": float(statistics["error"][0]),
               "subsurface": float(statistics["mean"][1]), "subsurface_error": float(statistics["error"][1]),
               "surface_dmd": float(layer_dmd[0]), "subsurface_dmd": float(layer_dmd[1]),
               "bulk_lm": float(interior_mean(lm)), "surface_lm": float(lm[0]), "subsurface_lm": float(lm[1]),
               "drift_z": statistics["drift_z"], "start_z": statistics["start_z"],
               "equilibrated": bool(max(abs(statistics["drift_z"]), abs(statistics["start_z"])) < DRIFT_Z_LIMIT),
               "accepted_fraction": accepted / max(candidates, 1), "candidates_per_s": candidates / wall,
               "wall_s": wall, "dmd_residual_ev": equilibrium.residual}
        row["ratio_dmd_sampler"] = row["surface_dmd"] / row["surface"] if row["surface"] > 0 else float("nan")
        for suffix in ("", "_dmd", "_lm"):
            row["segregation_free_energy" + suffix] = segregation_free_energy(row["surface" + suffix],
                                                                              row["bulk" + suffix], p.temperature)
        rows.append(row)
        records[f"c{nominal:g}"] = record
        for name, value in (("nominal", nominal), ("layer_c_sampler", statistics["mean"]),
                            ("layer_c_sampler_error", statistics["error"]), ("layer_c_dmd", layer_dmd)):
            arrays[name].append(value)
        log(f"c = {nominal:g} ({n_mg} Mg): surface c sampler {row['surface']:.4f} ± {row['surface_error']:.4f}, "
            f"DMD {row['surface_dmd']:.4f}, LM {row['surface_lm']:.4f}; subsurface sampler {row['subsurface']:.4f} "
            f"± {row['subsurface_error']:.4f}, DMD {row['subsurface_dmd']:.4f}; drift z {row['drift_z']:+.2f}, "
            f"starts z {row['start_z']:+.2f}; {wall:.0f} s")
        if not row["equilibrated"]:
            logger.warning(f"c = {nominal:g}: the profile still drifts (|z| ≥ {DRIFT_Z_LIMIT:g}): not an equilibrium; "
                           "run longer (--t-equilibrate, --t-average)")
    io.save_npz(output / "equilibrium.npz", {name: np.array(value) for name, value in arrays.items()})
    io.save_npz(output / "equilibrium_records.npz", {**records, "time": times})
    walls["equilibrium"] = time.perf_counter() - tick

    tick = time.perf_counter()
    kinetics, kinetic_arrays = _kinetics(p, potential, slab, layers, vg, vg_neighbors, thin, key, rng, progress)
    io.save_npz(output / "kinetics.npz", kinetic_arrays)
    walls["kinetics"] = time.perf_counter() - tick
    _write_table(output / "table.csv", rows)

    from . import surface_sampler_figures

    surface_sampler_figures.draw(output / "fig_sampler.png", p, arrays, kinetic_arrays, rows)
    walls["total"] = time.perf_counter() - start
    summary = {"study": "alloy sampler", "device": run["device"], "platform": run["platform"], "dtype": run["dtype"],
               "n_atoms": slab.n_atoms, "cells": list(p.cells), "n_layers": n_layers, "replicas": p.replicas,
               "wall_time_s": walls, "segregation_energy_ev": segregation, "equilibrium": rows,
               "kinetics": kinetics}
    summary = io.write_study_summary(output, summary)
    log(f"kinetics at c = {p.kinetics_concentration:g}, τ = {p.t_end:g}: surface c sampler "
        f"{kinetics['surface_final']:.4f} ± {kinetics['surface_final_error']:.4f}, K2 {kinetics['surface_final_k2']:.4f}, "
        f"K3 {kinetics['surface_final_k3']:.4f}; wall time {walls['total']:.0f} s; files in {output}/")
    return summary


class _Thin:
    """The layer slab (:func:`dmdjax.studies.surface.layer_slab`) with its list and VG free energy."""

    def __init__(self, system, layers, potential, temperature):
        self.system, self.layers = system, layers
        self.neighbors = neighbor_list(system.positions, system.cell, potential.cutoff, skin=0.5)
        self.vg = VGFreeEnergy(potential, system.cell, temperature, system.n_atoms, species=SPECIES)

    def start(self, slab, layers, concentration):
        """(X, k) relaxed at the uniform ``concentration`` here, copied layer by layer onto ``slab``."""
        return layer_relaxed_start(slab, layers, concentration, self.vg, self.system, self.layers, self.neighbors)


def _surface_parameters(p: SamplerStudyParameters) -> SurfaceParameters:
    """The surface study's parameters of the same slab (its :func:`build_slab` and layers)."""
    return SurfaceParameters(cells=p.cells, temperature=p.temperature, lattice_constant=p.lattice_constant,
                             kinetic_cutoff=p.kinetic_cutoff, potential=p.potential)


def _kinetics(p: SamplerStudyParameters, potential, slab, layers, vg, vg_neighbors, thin, key, rng, progress):
    """The sampler (random start, small ε) and DMD's K2 and K3 (uniform start) at
    ``kinetics_concentration``, on one time axis (τ = 1/Γ₀)."""
    n_mg = int(round(p.kinetics_concentration * slab.n_atoms))
    c = n_mg / slab.n_atoms
    times = p.save_times()
    start = thin.start(slab, layers, c)
    sampler = _sampler(p, potential, slab, start.positions, n_mg, p.kinetics_steps_per_tau)
    spins = np.stack([profile_spins(rng, n_mg, np.ones(slab.n_atoms)) for _ in range(p.replicas)])
    tick = time.perf_counter()
    record, candidates, accepted = _layer_records(sampler, key, spins, times, layers, p.replicas, progress,
                                                  f"sampler kinetics at c = {c:.4g}")
    wall = time.perf_counter() - tick
    folded = fold(record)  # (T, R, L')
    arrays = {"time": times, "layer_c_sampler": folded.mean(axis=1),
              "layer_c_sampler_error": folded.std(axis=1, ddof=1) / np.sqrt(p.replicas)}
    laws = {"k2": dmd.SpinDiffusion(tau=1.0, variant="gradient"),
            "k3": dmd.MasterEquation(attempt_frequency=1.0, activation_energy=0.0)}
    for name, law in track(laws.items(), "DMD kinetics (K2, K3)", "law", enabled=progress):
        trajectory = dmd.run(vg, start, vg_neighbors, law, times, kinetic_cutoff=p.kinetic_cutoff,
                             relax_at="interval", rtol=p.rtol, atol=p.atol, max_steps=100_000)
        arrays[f"layer_c_{name}"] = fold(group_means(mg_fraction(trajectory.order_parameter), layers))
    summary = {"concentration": c, "n_mg": n_mg, "time_reached": float(times[-1]),
               "surface_final": float(arrays["layer_c_sampler"][-1, 0]),
               "surface_final_error": float(arrays["layer_c_sampler_error"][-1, 0]),
               "surface_final_k2": float(arrays["layer_c_k2"][-1, 0]),
               "surface_final_k3": float(arrays["layer_c_k3"][-1, 0]),
               "accepted_fraction": accepted / max(candidates, 1), "candidates_per_s": candidates / wall,
               "sampler_wall_s": wall}
    return summary, arrays


TABLE_COLUMNS = ("nominal", "n_mg", "bulk", "bulk_error", "bulk_dmd", "bulk_lm", "surface", "surface_error", "surface_dmd", "surface_lm",
                 "ratio_dmd_sampler", "subsurface", "subsurface_error", "subsurface_dmd", "subsurface_lm",
                 "segregation_free_energy", "segregation_free_energy_dmd", "segregation_free_energy_lm",
                 "drift_z", "start_z")


def _write_table(path, rows) -> None:
    """``table.csv``: one row per composition, the columns of :data:`TABLE_COLUMNS`."""
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        writer.writerows([f"{row[name]:.6g}" for name in TABLE_COLUMNS] for row in rows)
