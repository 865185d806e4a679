"""The Al–Mg surface-segregation study (`dmdjax alloy surface`) at its smallest size: files,
conservation, F decrease, the Langmuir–McLean check, the extended-XYZ frames and resume."""

import json

import ase.io
import numpy as np
import pytest

from conftest import check_study_resumes
from dmdjax import cli, dmd
from dmdjax.studies import surface

TINY = ["--cells", "3,5,5", "--t-end", "0.3", "--outputs", "3", "--isotherm", "0.01", "--no-progress",
        "--attempt-frequency", "1e13/s"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    output = tmp_path_factory.mktemp("surface") / "run"
    assert cli.main(["alloy", "surface", "--output", str(output), *TINY]) == 0
    return output, json.loads((output / "summary.json").read_text())


def test_attempt_frequency_units():
    from dmdjax.studies.alloy import parse_frequency

    assert parse_frequency("10") == (10.0, "") and parse_frequency("1e13/s") == (1e13, "s")
    assert parse_frequency("2.5e12 / ps") == (2.5e12, "ps")
    with pytest.raises(ValueError, match="unit must be one of"):
        parse_frequency("1e13/h")
    with pytest.raises(ValueError, match="must be a number"):
        parse_frequency("fast/s")
    with pytest.raises(ValueError, match="time_unit must be one of"):
        surface.SurfaceParameters(time_unit="hours")


def test_langmuir_mclean_closed_form():
    # E_seg = 0: no segregation; E_seg < 0: c_s/(1 − c_s) = c_b/(1 − c_b) · e^{−E/kT}
    assert surface.langmuir_mclean(0.01, 0.0, 600.0) == pytest.approx(0.01)
    kt = 8.617333262e-5 * 600.0
    c_s = surface.langmuir_mclean(0.01, -0.2, 600.0)
    assert c_s / (1 - c_s) == pytest.approx(0.01 / 0.99 * np.exp(0.2 / kt), rel=1e-12)


def test_study_writes_its_files_and_conserves_mg(study):
    output, summary = study
    for name in ("trajectory.npz", "frames.extxyz", "profiles.npz", "isotherm.npz", "run.json", "summary.json",
                 "fig_surface.png"):
        assert (output / name).is_file() and name in summary["files"]
    assert summary["n_atoms"] == 3 * 5 * 5 * 4 and summary["n_layers"] == 6
    kinetics = summary["kinetics"]
    assert kinetics["sum_c_max_change"] < 1e-10
    assert kinetics["free_energy_max_increase"] <= 1e-9 and kinetics["free_energy_change"] < -0.1
    assert kinetics["surface_final"] > 0.06 > kinetics["subsurface_final"]  # Mg goes to the surface layer
    assert summary["time_reached_rate_units"] == pytest.approx(0.3)
    # ν given per second: the run's times are in seconds (Γ₀ = ν e^{−βQ} = 3.4e6 s⁻¹ at 600 K)
    assert summary["time_unit"] == "s"
    assert summary["time_reached"] == pytest.approx(0.3 / (1e13 * np.exp(-0.77 / (8.617333262e-5 * 600))), rel=1e-9)
    trajectory = dmd.load_trajectory(output / "trajectory.npz")
    assert trajectory.parameters["relax_at"] == "interval" and trajectory.parameters["law"] == "MasterEquation"


def test_dilute_isotherm_follows_langmuir_mclean_with_the_mean_field_segregation_energy(study):
    """In the dilute limit DMD's equilibrium obeys LM with its own ΔG = 2(μ^ex_b − μ^ex_s); the
    statics E_seg (one Mg, relaxed) is lower by the solute's own relaxation, which the mean field lacks."""
    _, summary = study
    energies = summary["segregation_energy_ev"]
    assert energies["relaxed"] < energies["unrelaxed"] < 0  # Mg segregates; relaxation helps it
    assert abs(energies["mean_field"] - energies["unrelaxed"]) < 0.03  # mean field ≈ unrelaxed swap
    # Per-species widths (the solute's own vibrational entropy) move ΔG by about a meV.
    assert 1e-4 < abs(energies["mean_field_species_widths"] - energies["mean_field"]) < 0.005
    for row in summary["isotherm"]:
        assert row["residual_ev"] < 1e-7
        assert row["surface"] > 5 * row["bulk"]
        assert row["surface"] == pytest.approx(row["langmuir_mclean_mean_field"], rel=0.15)
        assert row["surface"] < row["langmuir_mclean"]


def test_frames_open_in_ase(study):
    output, summary = study
    frames = ase.io.read(output / "frames.extxyz", index=":")
    assert len(frames) == 3
    trajectory = dmd.load_trajectory(output / "trajectory.npz")
    for frame, s, time in zip(frames, np.asarray(trajectory.order_parameter), np.asarray(trajectory.time)):
        np.testing.assert_allclose(frame.arrays["c_Mg"], 0.5 * (1 - s), atol=1e-8)  # extxyz keeps 8 decimals
        assert np.all(frame.arrays["k"] > 0) and np.all(np.isfinite(frame.arrays["site_free_energy"]))
        assert frame.info["time"] == pytest.approx(time)
    assert frames[-1].info["total_free_energy"] == pytest.approx(float(trajectory.free_energy[-1]))
    assert np.sum(frames[-1].arrays["site_free_energy"]) == pytest.approx(float(trajectory.free_energy[-1]), rel=1e-6)
    # OVITO-ready: each atom its majority species, a finite cell along the free x (the slab + 10 Å)
    last = frames[-1]
    majority = np.where(last.arrays["c_Mg"] > 0.5, "Mg", "Al")
    assert last.get_chemical_symbols() == majority.tolist()
    assert tuple(last.pbc) == (False, True, True)
    assert last.cell[0, 0] == pytest.approx(last.positions[:, 0].max() + 10.0, abs=1e-6)


def test_ovito_classifies_the_slab_interior_as_fcc(study):
    """OVITO (optional: skipped where it does not install) reads a frame and its common-neighbour
    analysis runs (it refuses a degenerate cell) and finds the slab's interior fcc."""
    ovito_io = pytest.importorskip("ovito.io")
    from ovito.modifiers import CommonNeighborAnalysisModifier

    output, summary = study
    pipeline = ovito_io.import_file(str(output / "frames.extxyz"))
    pipeline.modifiers.append(CommonNeighborAnalysisModifier())
    data = pipeline.compute(pipeline.source.num_frames - 1)
    structure = np.asarray(data.particles["Structure Type"])
    x = np.asarray(data.particles.positions)[:, 0]
    interior = (x > x.min() + 1.0) & (x < x.max() - 1.0)  # all but the two surface layers (a/2 = 2.05 Å apart)
    assert np.all(structure[interior] == CommonNeighborAnalysisModifier.Type.FCC)
    assert data.attributes["CommonNeighborAnalysis.counts.FCC"] == interior.sum()


def test_a_killed_run_resumes_to_the_same_state(study, tmp_path):
    output, _ = study
    check_study_resumes(["alloy", "surface", *TINY], output, tmp_path / "copy")


@pytest.mark.slow
def test_layer_uniform_equilibria_do_not_depend_on_the_cross_section():
    """The dilute ΔG solved on the smallest cross-section (surface.layer_slab) equals that of a
    wider slab: the layer-uniform state is the same per site for any periodic cross-section."""
    import jax.numpy as jnp

    from dmdjax import VGFreeEnergy, neighbor_list
    from dmdjax.studies.alloy import load_alloy_potential

    p = surface.SurfaceParameters(cells=(3, 6, 5))
    potential = load_alloy_potential(p.potential)
    values = []
    for slab, layers in (surface.layer_slab(p), surface.build_slab(p)):
        assert slab.positions.dtype == jnp.float64
        neighbors = neighbor_list(slab.positions, slab.cell, potential.cutoff, skin=0.5)
        vg = VGFreeEnergy(potential, slab.cell, p.temperature, slab.n_atoms, species=surface.SPECIES)
        values.append(surface.mean_field_segregation(vg, slab.positions, layers, neighbors))
    assert surface.layer_slab(p)[0].n_atoms == 300 and surface.build_slab(p)[0].n_atoms == 360
    assert values[0] == pytest.approx(values[1], abs=1e-7)


@pytest.mark.slow
def test_the_kinetic_start_tiled_from_the_layer_slab_is_relaxed():
    """(X, k) relaxed on the layer slab and copied layer by layer is the relaxed state of a wider
    slab: relaxing from it stops at once, and matches the relaxation from the lattice."""
    import jax.numpy as jnp

    from dmdjax import VGFreeEnergy, neighbor_list, relax
    from dmdjax.studies.alloy import load_alloy_potential

    p = surface.SurfaceParameters(cells=(3, 6, 5), concentration=0.06)
    potential = load_alloy_potential(p.potential)
    parts = []
    for slab, layers in (surface.layer_slab(p), surface.build_slab(p)):
        neighbors = neighbor_list(slab.positions, slab.cell, potential.cutoff, skin=0.5)
        parts.append((slab, layers, neighbors, VGFreeEnergy(potential, slab.cell, p.temperature, slab.n_atoms,
                                                            species=surface.SPECIES)))
    (thin, thin_layers, thin_neighbors, thin_vg), (slab, layers, neighbors, vg) = parts
    start = surface.layer_relaxed_start(slab, layers, p.concentration, thin_vg, thin, thin_layers, thin_neighbors)
    assert start.positions.dtype == jnp.float64 and np.all(np.asarray(start.order_parameter) == 1 - 2 * 0.06)
    warm = relax(vg, start, neighbors)
    cold = relax(vg, vg.initial_state(slab.positions, start.order_parameter, neighbors), neighbors)
    assert int(warm.iterations) <= 2 < int(cold.iterations)
    np.testing.assert_allclose(warm.positions, cold.positions, atol=1e-5)
    np.testing.assert_allclose(warm.stiffness, cold.stiffness, rtol=1e-5)
    assert float(warm.free_energy) == pytest.approx(float(cold.free_energy), abs=1e-8 * slab.n_atoms)
    with pytest.raises(ValueError, match="not the same stack"):
        surface.layer_relaxed_start(slab, layers + 1, p.concentration, thin_vg, thin, thin_layers, thin_neighbors)
