"""The Al–Mg edge-dislocation study (`dmdjax alloy dislocation`) at its smallest size: files,
conservation, F decrease, Mg to the tensile side, the elastic pressure against the relaxed
structure, frames and resume; and the Cottrell fit on a closed form."""

import json

import ase.io
import numpy as np
import pytest

from conftest import check_study_resumes
from dmdjax import cli, dmd
from dmdjax.studies import dislocation
from dmdjax.units import BOLTZMANN_EV_PER_K

TINY = ["--radius", "16", "--t-end", "0.3", "--outputs", "3", "--no-progress"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    output = tmp_path_factory.mktemp("dislocation") / "run"
    assert cli.main(["alloy", "dislocation", "--output", str(output), *TINY]) == 0
    return output, json.loads((output / "summary.json").read_text())


def test_cottrell_fit_recovers_the_misfit_volume():
    rng = np.random.default_rng(0)
    pressure = rng.uniform(-2.0, 2.0, 200)  # GPa
    mean, volume, temperature = 0.05, 5.5, 600.0  # Å³, K
    odds = mean / (1 - mean) * np.exp(-pressure * dislocation.EV_PER_A3_PER_GPA * volume
                                      / (BOLTZMANN_EV_PER_K * temperature))
    fit = dislocation.cottrell_fit(odds / (1 + odds), pressure, mean, temperature)
    assert fit["misfit_volume"] == pytest.approx(volume, rel=1e-10)
    assert fit["intercept"] == pytest.approx(0.0, abs=1e-10) and fit["correlation"] == pytest.approx(-1.0)


def test_parameters_are_validated(tmp_path):
    with pytest.raises(ValueError, match="boundary_width"):
        dislocation.DislocationParameters(radius=10.0, boundary_width=8.0)
    with pytest.raises(ValueError, match="concentration"):
        dislocation.DislocationParameters(concentration=1.5)
    output = tmp_path / "short"
    assert cli.main(["alloy", "dislocation", "--length", "2", "--output", str(output), "--no-progress"]) == 2
    assert not output.exists()  # refused before anything was written


def test_study_writes_its_files_conserves_mg_and_lowers_f(study):
    output, summary = study
    for name in ("trajectory.npz", "frames.extxyz", "maps.npz", "profiles.npz", "run.json", "summary.json",
                 "fig_dislocation.png"):
        assert (output / name).is_file() and name in summary["files"]
    assert summary["n_atoms"] == 908 and 0 < summary["n_mobile"] < summary["n_atoms"]
    kinetics = summary["kinetics"]
    assert kinetics["sum_c_max_change"] < 1e-10
    assert kinetics["free_energy_max_increase"] <= 1e-9 and kinetics["free_energy_change"] < -0.1
    trajectory = dmd.load_trajectory(output / "trajectory.npz")
    assert trajectory.parameters["relax_at"] == "interval" and trajectory.parameters["law"] == "MasterEquation"
    maps = np.load(output / "maps.npz")
    clamped = maps["column_clamped"]
    assert clamped.any() and np.all(maps["column_c"][:, clamped] == maps["column_c"][0, clamped])  # never move
    assert summary["initial_relaxation"]["max_displacement"] > 0.05  # the core relaxed


def test_mg_gathers_on_the_tensile_side(study):
    _, summary = study
    kinetics = summary["kinetics"]
    assert kinetics["tensile_final"] > 1.1 * 0.05 > 0.05 / 1.1 > kinetics["compressive_final"]
    assert kinetics["max_column_pressure"] < 0  # the richest column is under tension
    assert abs(kinetics["mobile_mean"] - 0.05) < 1e-12  # Σc over the mobile sites is the nominal one
    # the elastic pressure beside the maps is the one of the built structure (bond lengths, tr ε),
    # and still that of the relaxed one in sign and size
    check = summary["pressure_check"]
    assert check["built"]["correlation"] > 0.97 and check["built"]["slope"] == pytest.approx(1.0, abs=0.1)
    assert check["relaxed"]["correlation"] > 0.5 and 0.5 < check["relaxed"]["slope"] < 2.0


def test_frames_open_in_ase(study):
    output, _ = study
    frames = ase.io.read(output / "frames.extxyz", index=":")
    trajectory = dmd.load_trajectory(output / "trajectory.npz")
    assert len(frames) == 3
    for frame, s in zip(frames, np.asarray(trajectory.order_parameter)):
        np.testing.assert_allclose(frame.arrays["c_Mg"], 0.5 * (1 - s), atol=1e-8)  # extxyz keeps 8 decimals
        assert set(frame.arrays) >= {"pressure_elastic", "pressure_relaxed", "clamped", "k", "site_free_energy"}
    assert tuple(frames[0].pbc) == (False, False, True)


def test_a_killed_run_resumes_to_the_same_state(study, tmp_path):
    output, _ = study
    check_study_resumes(["alloy", "dislocation", *TINY], output, tmp_path / "copy")
