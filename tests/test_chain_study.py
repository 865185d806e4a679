"""`dmdjax chain --quick`: the files it writes (DESIGN.md §6)."""

import json

import numpy as np
import pytest

from dmdjax import cli, dmd
from dmdjax.studies import chain


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("chain")
    assert cli.main(["chain", "--quick", "--output", str(out), "--overwrite", "--no-progress", "--set", "seed=3"]) == 0
    return out


def test_quick_study_writes_every_file(study):
    p = chain.ChainParameters.quick(seed=3)
    run = json.loads((study / "run.json").read_text())
    assert run["parameters"]["n_sites"] == p.n_sites == 16 and run["parameters"]["seed"] == 3
    assert run["parameters"]["kt"] == p.kt and run["k1_mobility"] == pytest.approx(1 / p.kt / 2)
    for name in chain.FIGURES:
        path = study / name
        assert path.stat().st_size > 10_000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = [(study / f"{law}_n{p.n_sites}.npz", p.n_sites, law) for law in ("k1", "k2")]
    runs += [(study / "sizes" / f"{law}_n{n}.npz", n, law) for n in p.sizes for law in ("k1", "k2")]
    for path, n, law in runs:
        trajectory = dmd.load_trajectory(path)
        s = np.asarray(trajectory.order_parameter)
        assert s.shape == (p.n_frames, n) and np.asarray(trajectory.positions).shape == (p.n_frames, n, 1)
        assert np.max(np.abs(s.sum(1) - s[0].sum())) < 1e-10  # Σ s conserved
        assert s[0, 0] == 1 and s[0, -1] == -1 and np.all(s[:, 0] == 1) and np.all(s[:, -1] == -1)
        free_energy = np.asarray(trajectory.free_energy)
        assert np.all(np.isfinite(free_energy)) and free_energy[-1] < free_energy[0]
        if law == "k1":  # F is K1's Lyapunov function (not the exact K2's: a mean-field closure)
            assert np.all(np.diff(free_energy) <= 1e-9)
    sampled = np.load(study / "spin_diffusion.npz")
    assert sampled["order_parameter"].shape == (p.n_frames, p.n_sites)
    totals = sampled["order_parameter"].sum(1)
    assert np.allclose(totals, totals[0], rtol=0, atol=1e-12)  # every replica conserves its Σσ
    s0 = chain.initial_order_parameter(p.n_sites, p.contrast)
    binomial_error = np.sqrt((1 - s0**2) / p.replicas)  # E[σ_i(0)] = s_i(0): product measure
    assert np.all(np.abs(sampled["order_parameter"][0] - s0) <= 5 * binomial_error + 1e-12)
    assert np.all(sampled["order_parameter_error"][1:, 1:-1] > 0)  # the end species are fixed
    summary = json.loads((study / "summary.json").read_text())
    assert set(summary["models"]) == {"K1", "K2", "spin_diffusion", "equilibrium"}
    assert summary["models"]["equilibrium"]["max_abs_diff_equilibrium"] == 0
    assert summary["equilibrium_residual_ev"] < 1e-9
    assert max(summary["sigma_conservation"].values()) < 1e-10
    assert {"total", "dmd", "sizes", "sampler"} <= set(summary["wall_time_s"])
    assert "sizes/k2_n32.npz" in summary["files"]


def test_interface_of_a_tanh_profile():
    """Centre and width of −Δs: for s = −tanh((x − x0)/w), width → π w / (2√3) on a fine grid."""
    x = np.linspace(0.0, 60.0, 601)
    x0, w = 27.5, 3.0
    centre, width = chain.interface(x[:, None], -np.tanh((x - x0) / w))
    assert centre == pytest.approx(x0, abs=1e-6) and width == pytest.approx(np.pi * w / (2 * np.sqrt(3)), rel=1e-3)
    assert np.isnan(chain.interface(x[:, None], np.zeros_like(x))[0])  # no drop, no interface
    s0 = chain.initial_order_parameter(9, 0.5)
    assert s0.tolist() == [1, 0.5, 0.5, 0.5, 0, -0.5, -0.5, -0.5, -1] and s0[1:-1].sum() == 0


def test_bad_parameters_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown chain parameter"):
        chain.ChainParameters().replace(temperature=3)
    with pytest.raises(ValueError, match="kt"):
        chain.ChainParameters().replace(kt=-1)
    with pytest.raises(ValueError, match="kt must be a positive number; got -1"):
        chain.ChainParameters(kt=-1)  # validated at construction, not later as a negative temperature
    assert chain.ChainParameters(kt=0.05).temperature == pytest.approx(0.05 / 8.617333262e-5)
    assert cli.main(["chain", "--output", str(tmp_path / "x"), "--set", "kt"]) == 2
    config = tmp_path / "c.toml"
    config.write_text("[chain]\nn_sites = 20\nsizes = [20, 24]\n")
    assert chain.load_parameters(config).sizes == (20, 24)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert cli.main(["chain", "--quick", "--output", str(tmp_path / "full")]) == 2
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
