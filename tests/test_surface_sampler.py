"""The sampler study (`dmdjax alloy sampler`): the statistics it reports, and a tiny run through
the command line (files, Mg conservation per replica, the DMD laws' start and mass balance)."""

import json

import numpy as np
import pytest

from dmdjax import cli
from dmdjax.studies import surface_sampler as ss


def test_fold_averages_the_two_surfaces():
    values = np.arange(8.0)
    np.testing.assert_array_equal(ss.fold(values), [3.5, 3.5, 3.5, 3.5])
    values = np.array([[4.0, 1, 0, 0, 3, 2]])
    np.testing.assert_array_equal(ss.fold(values), [[3.0, 2.0, 0.0]])


def test_equilibrium_statistics_mean_error_and_drift():
    """Replicas with known means and white noise: the replica standard error; a trend in time
    shows in drift_z, a difference between the halves of the replicas in start_z."""
    rng = np.random.default_rng(0)
    n_samples, n_replicas, n_layers = 200, 64, 4
    level = np.array([0.3, 0.1, 0.05, 0.05])  # unfolded (L = 4): layers 0, 1 | 1, 0 mirrored below
    records = level[[0, 1, 1, 0]] + 0.05 * rng.normal(size=(n_samples, n_replicas, n_layers))
    stats = ss.equilibrium_statistics(records, 10)
    np.testing.assert_allclose(stats["mean"], level[:2], atol=4 * stats["error"].max())
    # the error of a replica's mean of 190 × 2 (folded) white samples of σ = 0.05, over √64
    assert stats["error"][0] == pytest.approx(0.05 / np.sqrt(380) / 8, rel=0.25)
    assert abs(stats["drift_z"]) < 4 and abs(stats["start_z"]) < 4
    trend = records + np.linspace(0, 0.02, n_samples)[:, None, None]
    assert ss.equilibrium_statistics(trend, 10)["drift_z"] > 6
    starts = records.copy()
    starts[:, : n_replicas // 2] -= 0.01
    assert ss.equilibrium_statistics(starts, 10)["start_z"] < -6


def test_langmuir_mclean_profile_keeps_the_count_and_the_isotherm():
    from dmdjax.studies.alloy import langmuir_mclean

    flat = ss.langmuir_mclean_profile(20, 20, 50, (), 600.0)
    np.testing.assert_allclose(flat, 20 / 1000, rtol=1e-10)
    profile = ss.langmuir_mclean_profile(20, 20, 50, (-0.25, 0.01), 600.0)
    assert 2 * 50 * profile.sum() == pytest.approx(20, rel=1e-10)
    bulk = profile[-1]
    assert profile[0] == pytest.approx(float(langmuir_mclean(bulk, -0.25, 600.0)), rel=1e-10)
    assert profile[1] == pytest.approx(float(langmuir_mclean(bulk, 0.01, 600.0)), rel=1e-10)
    assert profile[0] > 0.1 > bulk


def test_segregation_free_energy_inverts_the_isotherm():
    from dmdjax.studies.alloy import langmuir_mclean

    surface = float(langmuir_mclean(0.003, -0.2, 600.0))
    assert ss.segregation_free_energy(surface, 0.003, 600.0) == pytest.approx(-0.2, rel=1e-10)
    assert np.isnan(ss.segregation_free_energy(0.1, 0.0, 600.0))


def test_profile_spins_have_the_count_and_follow_the_weights():
    rng = np.random.default_rng(1)
    weights = np.r_[np.full(10, 1.0), np.full(90, 1e-9)]
    spins = ss.profile_spins(rng, 5, weights)
    assert np.sum(spins < 0) == 5 and np.all(spins[10:] == 1) and set(np.unique(spins)) == {-1.0, 1.0}


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match=r"concentrations\[1\] must lie in \(0, 0.5\).*got 0.7"):
        ss.SamplerStudyParameters(concentrations=(0.01, 0.7))
    with pytest.raises(ValueError, match="replicas must be even .* got 5"):
        ss.SamplerStudyParameters(replicas=5)
    with pytest.raises(ValueError, match="skin must be a finite number > 0; got -1"):
        ss.SamplerStudyParameters(skin=-1.0)
    with pytest.raises(ValueError, match=r"cells must be \(nx >= 3, ny >= 5, nz >= 5\)"):
        ss.SamplerStudyParameters(cells=(4, 4, 5))


@pytest.mark.slow
def test_tiny_study_through_the_command_line(tmp_path):
    output = tmp_path / "run"
    assert cli.main(["alloy", "sampler", "--quick", "--output", str(output), "--no-progress",
                     "--concentrations", "0.03", "--t-equilibrate", "1", "--t-average", "2", "--t-end", "1"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    for name in ("statics.json", "equilibrium.npz", "equilibrium_records.npz", "kinetics.npz", "table.csv",
                 "fig_sampler.png", "run.json"):
        assert (output / name).is_file() and name in summary["files"]
    n_atoms, n_layers = summary["n_atoms"], summary["n_layers"]
    (row,) = summary["equilibrium"]
    assert isinstance(row["equilibrated"], bool)
    energies = summary["segregation_energy_ev"]  # relaxed statics: the surface binds Mg, the subsurface hardly
    assert energies["surface"] < -0.2 and abs(energies["subsurface"]) < 0.05
    assert row["n_mg"] == 12 and n_atoms == 400 and n_layers == 8
    # Every replica keeps its Mg count at every sample (Kawasaki exchange conserves it exactly).
    records = np.load(output / "equilibrium_records.npz")["c0.03"]  # (T, R, L)
    np.testing.assert_allclose(records.sum(axis=-1) * (n_atoms / n_layers), row["n_mg"], atol=1e-9)
    assert 0 < row["surface"] < 1 and row["surface_error"] > 0 and row["subsurface_dmd"] > 0
    # DMD's constrained minimum keeps the slab's Mg; Langmuir–McLean grows with the bulk c.
    equilibrium = np.load(output / "equilibrium.npz")
    assert 2 * equilibrium["layer_c_dmd"][0].sum() * (n_atoms / n_layers) == pytest.approx(12, rel=1e-6)
    assert row["surface_lm"] > row["subsurface_lm"] and row["surface_lm"] > row["bulk_lm"]
    kinetics = np.load(output / "kinetics.npz")
    c0 = summary["kinetics"]["concentration"]
    np.testing.assert_allclose(kinetics["layer_c_k2"][0], c0, rtol=1e-9)
    np.testing.assert_allclose(kinetics["layer_c_k3"][0], c0, rtol=1e-9)
    np.testing.assert_allclose(kinetics["layer_c_sampler"].sum(axis=-1) * 2 * (n_atoms / n_layers),
                               summary["kinetics"]["n_mg"], atol=1e-9)
    # The surface layer gains Mg under both mean-field laws; K3's dilute rates are twice K2's.
    assert kinetics["layer_c_k3"][-1, 0] > kinetics["layer_c_k2"][-1, 0] > c0
    lines = (output / "table.csv").read_text().splitlines()
    assert lines[0].startswith("nominal,n_mg,bulk") and len(lines) == 2
