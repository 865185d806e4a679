"""What the Al–Mg studies (``dmdjax alloy surface``, ``dmdjax alloy dislocation``) share.

Each study opens its output folder (:func:`dmdjax.io.open_study_folder`), loads a potential with
both species (:func:`load_alloy_potential`), runs DMD with the master equation K3
(:func:`run_kinetics`), writes its frames (:func:`write_frames`) and finishes with
``summary.json`` (:func:`dmdjax.io.write_study_summary`).
Concentrations are Mg fractions: s = +1 is Al, s = −1 is Mg, c = (1 − s)/2.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .. import dmd, io
from ..potentials import load_eam
from ..systems import System
from ..units import beta_from_temperature

SPECIES = ("Al", "Mg")  # s = +1 Al, s = −1 Mg


def mg_fraction(order_parameter):
    """c = (1 − s)/2, the Mg fraction of each site."""
    return 0.5 * (1.0 - np.asarray(order_parameter))


def group_means(values, labels: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (..., N) over the atoms of each label 0 … L − 1 (a layer, a column)
    → (..., L); one pass over the atoms per leading index (``np.bincount``)."""
    values = np.asarray(values, dtype=float)
    labels = np.asarray(labels)
    n_groups = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=n_groups)
    rows = values.reshape(-1, values.shape[-1])
    sums = np.stack([np.bincount(labels, row, n_groups) for row in rows])
    return (sums / counts).reshape(values.shape[:-1] + (n_groups,))


def load_alloy_potential(name: str):
    """The EAM potential ``name`` (bundled name or file), checked to hold Al and Mg."""
    potential = load_eam(name)
    if set(SPECIES) - set(potential.species):
        raise ValueError(f"potential {name!r} has species {list(potential.species)}, needs Al and Mg")
    return potential


#: Units a study's ν may be given per (``time_unit``): every time of the run is then in that unit;
#: "" (the default) is the run's own unit, 1/ν's.
TIME_UNITS = ("", "s", "ms", "us", "ns", "ps", "fs")

KINETIC_POSITIVE = ("temperature", "attempt_frequency", "lattice_constant", "kinetic_cutoff", "t_end", "t_first",
                    "rtol", "atol")


def validate_parameters(p, positive=()) -> None:
    """Check the parameters every study has: ``concentration`` in (0, 1), the kinetic ones and
    ``positive`` finite and > 0, t_first < t_end, n_outputs ≥ 2 (``ValueError`` naming the value)."""
    if not 0 < p.concentration < 1:
        raise ValueError(f"concentration must lie in (0, 1); got {p.concentration!r}")
    for name in KINETIC_POSITIVE + tuple(positive):
        value = getattr(p, name)
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be finite and > 0; got {value!r}")
    if not p.t_first < p.t_end:
        raise ValueError(f"t_first ({p.t_first}) must be below t_end ({p.t_end})")
    if int(p.n_outputs) < 2:
        raise ValueError(f"n_outputs must be >= 2; got {p.n_outputs!r}")
    if p.time_unit not in TIME_UNITS:
        raise ValueError(f"time_unit must be one of {TIME_UNITS}; got {p.time_unit!r}")


def parse_frequency(text: str) -> tuple[float, str]:
    """``"10"`` -> (10.0, ""), ``"1e13/s"`` -> (1e13, "s"): an attempt frequency with the time unit it
    is given per (one of :data:`TIME_UNITS`); ``ValueError`` naming a bad value or unit."""
    value, _, unit = str(text).partition("/")
    unit = unit.strip()
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"attempt frequency must be a number, optionally per a unit (1e13/s); got {text!r}") from None
    if unit not in TIME_UNITS:
        raise ValueError(f"attempt frequency unit must be one of {TIME_UNITS[1:]}; got {unit!r} in {text!r}")
    return number, unit



def arrhenius_rate(p) -> float:
    """Γ₀ = ν e^{−Q/k_BT} (per unit time) of study parameters ``p`` (``attempt_frequency``,
    ``activation_energy``, ``temperature``)."""
    return p.attempt_frequency * float(np.exp(-p.activation_energy * beta_from_temperature(p.temperature)))


def save_times(p) -> np.ndarray:
    """0 and ``p.n_outputs − 1`` times log-spaced from ``p.t_first`` to ``p.t_end`` (given in
    1/Γ₀), in the run's time unit."""
    scaled = np.concatenate([[0.0], np.geomspace(p.t_first, p.t_end, p.n_outputs - 1)])
    return scaled / arrhenius_rate(p)


def check_checkpoint(output, resume: bool) -> None:
    """With ``resume``, read the run's checkpoint ``trajectory.npz`` before any computation, so a
    damaged or truncated one is refused at once (``ValueError`` naming the file)."""
    checkpoint = Path(output) / "trajectory.npz"
    if resume and checkpoint.exists():
        dmd.load_trajectory(checkpoint)


def run_kinetics(p, vg, positions, neighbors, output, *, resume: bool, overwrite: bool, progress: bool,
                 start=None):
    """The K3 run of a study from the uniform nominal composition, checkpointed in
    ``output/trajectory.npz`` (``resume`` continues it); returns ``(trajectory, resumed_from)``,
    the number of outputs the checkpoint already held. ``start``: a function of no arguments
    that returns the state to relax from at that composition (a :class:`~dmdjax.DMDState`),
    called only when the run starts afresh; default the lattice ``positions`` and the
    first-guess k."""
    checkpoint = Path(output) / "trajectory.npz"
    resuming = resume and checkpoint.exists()
    resumed_from = len(dmd.load_trajectory(checkpoint).time) if resuming else 0
    s0 = uniform_order_parameter(p.concentration, positions.shape[0], positions.dtype)
    if start is None or resuming:  # a resumed run starts from its checkpoint (dmd.run reads it)
        start = vg.initial_state(positions, s0, neighbors)
    else:
        start = start()
    law = dmd.MasterEquation(p.attempt_frequency, p.activation_energy)
    trajectory = dmd.run(vg, start, neighbors, law, save_times(p),
                         kinetic_cutoff=p.kinetic_cutoff,
                         relax_at="interval", rtol=p.rtol, atol=p.atol, max_steps=p.max_steps, output=checkpoint,
                         resume=resuming, overwrite=overwrite, progress=progress)
    return trajectory, resumed_from


def uniform_order_parameter(concentration: float, n_sites: int, dtype):
    """s = 1 − 2c on every site: the uniform Mg fraction ``concentration`` (Al = +1, Mg = −1; the
    inverse of :func:`mg_fraction`)."""
    return jnp.full(n_sites, 1.0 - 2.0 * concentration, dtype)


def write_frames(path, vg, template, trajectory, neighbors, rate, arrays=None) -> None:
    """One extended-XYZ frame per output time of ``trajectory`` on the atoms of ``template``.

    Each atom is written as its majority species (Mg where c_Mg > ½, so OVITO colours by type);
    per atom: ``c_Al``, ``c_Mg`` (concentrations), ``k`` (eV/Å²), ``site_free_energy`` (the site's term
    of F, eV) and the entries of ``arrays`` (fixed per-atom arrays); per frame: ``time`` (the run's
    time unit), ``time_rate_units`` (Γ₀t) and ``total_free_energy`` (eV). (Not ``energy`` or
    ``free_energy``: ASE's reader moves those names into a calculator.) Free directions get a
    finite cell vector (the atoms plus :data:`dmdjax.io.FRAME_VACUUM`), as OVITO's analyses need.
    """
    frames, per_atom, info = [], [], []
    for index in range(trajectory.time.shape[0]):
        state = trajectory.state[index]
        x, k, s = state.positions, state.stiffness, state.order_parameter
        neighbors = vg.covering_neighbors(state, neighbors)  # rebuilt where the run had to rebuild its list
        energy = vg.site_free_energies(state, neighbors)
        majority = jnp.asarray(np.asarray(mg_fraction(s)) > 0.5, template.species.dtype)
        frames.append(System(x, majority, template.cell, template.pinned, SPECIES))
        per_atom.append({**io.concentration_arrays(1.0 - mg_fraction(s), SPECIES), "k": np.asarray(k),
                         "site_free_energy": np.asarray(energy), **(arrays or {})})
        info.append({"time": float(trajectory.time[index]), "time_rate_units": float(trajectory.time[index]) * rate,
                     "total_free_energy": float(trajectory.free_energy[index])})
    io.write_extxyz(path, frames, per_atom, info)


def conservation(c, free_energy) -> dict:
    """``sum_c_max_change`` (max |Σc(t) − Σc(0)|), ``free_energy_max_increase`` (largest rise of
    F between outputs, eV: ≤ 0 when F decreased throughout) and ``free_energy_change`` (eV)."""
    c, free_energy = np.asarray(c), np.asarray(free_energy)
    return {"sum_c_max_change": float(np.max(np.abs(c.sum(axis=1) - c[0].sum()))),
            "free_energy_max_increase": float(np.max(np.diff(free_energy))),
            "free_energy_change": float(free_energy[-1] - free_energy[0])}


def summary_header(study: str, run: dict, walls: dict, times, rate: float) -> dict:
    """The ``summary.json`` keys both Al–Mg studies share: study, device, platform, dtype,
    ``wall_time_s``, ``rate`` (Γ₀), ``time_reached`` (in ``time_unit``: "" = the run's unit, 1/ν's) and
    ``time_reached_rate_units``; ``devices`` and ``processes``: the study's one system runs on one device
    (``dmdjax energy`` splits one large system over several, :mod:`dmdjax.domain`)."""
    return {"study": study, "device": run["device"], "platform": run["platform"], "dtype": run["dtype"],
            "devices": 1, "processes": jax.process_count(),
            "wall_time_s": walls, "rate": rate, "time_reached": float(times[-1]),
            "time_reached_rate_units": float(times[-1] * rate), "time_unit": run["parameters"]["time_unit"]}


def time_line(summary: dict, output) -> str:
    """The closing line of both studies' printed summary: physical time reached and wall time."""
    unit = summary.get("time_unit") or "run units (1/ν)"
    return (f"physical time reached {summary['time_reached']:.4g} {unit}; wall time "
            f"{summary['wall_time_s']['total']:.1f} s on {summary['device']} ({summary['platform']}); "
            f"files in {output}/")


def langmuir_mclean(bulk, segregation_energy: float, temperature: float):
    """Surface concentration of the isotherm c_s/(1 − c_s) = c_b/(1 − c_b) e^{−E_seg/k_BT}."""
    bulk = np.asarray(bulk, dtype=float)
    ratio = bulk / (1.0 - bulk) * np.exp(-segregation_energy * np.asarray(beta_from_temperature(temperature)))
    return ratio / (1.0 + ratio)


def centre_mean(layer_values: np.ndarray) -> np.ndarray:
    """Mean over the two middle layers (the 'bulk' of the slab)."""
    n = layer_values.shape[-1]
    return layer_values[..., (n - 1) // 2: n // 2 + 1].mean(axis=-1)
