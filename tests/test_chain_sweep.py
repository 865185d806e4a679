"""`dmdjax chain --sweep`: a parameter sweep as one vmapped (and device-sharded) batch (issue 9)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dmdjax import cli, dmd
from dmdjax.studies import chain, chain_sweep

pytestmark = pytest.mark.slow  # a study or notebook run: CI runs it, the fast tier does not

SMALL = ["--quick", "--set", "n_sites=8", "--set", "t_end=20", "--set", "n_frames=3", "--no-progress"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    assert cli.main(["chain", *SMALL, "--sweep", "beta=16,25", "--output", str(out), "--overwrite"]) == 0
    return out


def test_sweep_members_equal_separate_runs(sweep):
    """Each member of the batch is the run of its own parameters through the other driver,
    dmd.run (host-side loop, checks and files), to the ODE tolerance."""
    data = np.load(sweep / "sweep.npz")
    assert data["k1"].shape == data["k2"].shape == (2, 3, 8)
    np.testing.assert_allclose(data["values"], [16.0, 25.0])
    for b, beta in enumerate(data["values"]):
        p = chain.ChainParameters.quick(n_sites=8, t_end=20.0, n_frames=3, kt=1.0 / float(beta))
        runs = chain.run_dmd_models(p, chain.chain_model(p, 8), p.t_end)
        for law in ("K1", "K2"):
            separate = np.asarray(runs[law].order_parameter)
            assert np.max(np.abs(data[law.lower()][b] - separate)) < 1e-5, (beta, law)
    assert np.max(np.abs(data["k2"][0] - data["k2"][1])) > 1e-3  # β matters
    summary = json.loads((sweep / "summary.json").read_text())
    assert summary["parameter"] == "beta" and summary["batch"] == 2 and summary["devices"] == 1
    assert [r["k1_mobility"] for r in summary["runs"]] == pytest.approx([8.0, 12.5])  # β/(2τ) follows β
    assert max(max(r["sigma_conservation"].values()) for r in summary["runs"]) < 1e-12
    assert {"fig_sweep.png", "run.json", "summary.json", "sweep.npz"} <= set(summary["files"])


def test_sweep_sharded_over_two_devices_equals_unsharded(sweep, tmp_path):
    """The same sweep with 2 CPU devices faked by XLA: the batch is split over them
    (summary 'devices': 2) and gives the same trajectories to rounding."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_cpu_use_fusion_emitters=false")
    result = subprocess.run([sys.executable, "-m", "dmdjax.cli", "chain", *SMALL, "--sweep", "beta=16,25",
                             "--output", str(tmp_path / "sharded")], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "sharded" / "summary.json").read_text())["devices"] == 2
    sharded, plain = np.load(tmp_path / "sharded" / "sweep.npz"), np.load(sweep / "sweep.npz")
    for law in ("k1", "k2"):
        assert np.max(np.abs(sharded[law] - plain[law])) < 1e-10


def test_sweep_specifications_and_bad_input(tmp_path, capsys):
    assert chain_sweep.parse_sweep("kt=0.04:0.06:3")[1] == pytest.approx([0.04, 0.05, 0.06])
    name, values = chain_sweep.parse_sweep(" epsilon_ab = 0.98,0.99")
    assert name == "epsilon_ab" and values.tolist() == [0.98, 0.99]
    p = chain_sweep.swept_parameters(chain.ChainParameters(), "epsilon_ab", 0.97)
    assert p.epsilon == (1.0, 0.97, 1.0)
    for bad, message in [("sigma=1,2", "cannot sweep 'sigma'"), ("beta", "NAME=VALUES"), ("kt=a,b", "must be numbers"),
                         ("kt=0.1:0.2:0", "must be numbers")]:
        with pytest.raises(ValueError, match=message):
            chain_sweep.parse_sweep(bad)
    out = tmp_path / "never"
    assert cli.main(["chain", *SMALL, "--sweep", "beta=20,-4", "--output", str(out)]) == 2
    assert "beta must be positive; got -4.0" in capsys.readouterr().err
    assert cli.main(["chain", *SMALL, "--sweep", "contrast=0.5,1.5", "--output", str(out)]) == 2
    assert "contrast must lie in (0, 1); got 1.5" in capsys.readouterr().err
    assert not out.exists()  # every value is checked before anything is written


def test_ensemble_stack_and_sharding():
    """stack: leaves gain a leading axis, static parts must agree; one device: no sharding."""
    import jax.numpy as jnp

    from dmdjax import ensemble
    from dmdjax.potentials import LennardJones

    def lj(epsilon, cutoff=2.5):
        return LennardJones([[1.0, epsilon], [epsilon, 1.0]], [[1.0, 1.0], [1.0, 1.0]], species=("A", "B"), cutoff=cutoff)

    stacked = ensemble.stack([lj(0.9), lj(0.95), lj(1.0)])
    assert stacked.epsilon.shape == (3, 2, 2) and float(stacked.epsilon[1, 0, 1]) == 0.95
    laws = ensemble.stack([dmd.SpinDiffusion(1.0), dmd.SpinDiffusion(2.0)])
    assert jnp.asarray(laws.tau).shape == (2,) and laws.variant == "exact"
    with pytest.raises(ValueError, match="tree 1 differs"):
        ensemble.stack([lj(0.9), lj(0.9, cutoff=3.0)])
    with pytest.raises(ValueError, match="tree 1 differs"):
        ensemble.stack([dmd.SpinDiffusion(1.0), dmd.SpinDiffusion(1.0, "gradient")])
    with pytest.raises(ValueError, match="at least one"):
        ensemble.stack([])
    assert ensemble.batch_sharding(4) is None  # a single CPU device in the test process


def test_sweep_reports_progress_while_it_runs(tmp_path):
    """A batched call is one call: while it runs the sweep logs a line every `heartbeat` seconds
    (it once ran five minutes without a word)."""
    p = chain.ChainParameters.quick().replace(n_sites=8, t_end=20, n_frames=3)
    lines = []
    chain_sweep.run_chain_sweep(p, "beta", [16.0, 25.0], tmp_path / "sweep", log=lines.append, heartbeat=0.05)
    assert any("K1: 2 runs as one batched call" in line for line in lines)
    assert any("K2: still running after" in line for line in lines)
    quiet = []
    chain_sweep.run_chain_sweep(p, "beta", [16.0, 25.0], tmp_path / "quiet", log=quiet.append, heartbeat=0.05,
                                progress=False)
    assert not any("still running" in line for line in quiet)
