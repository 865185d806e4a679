"""No tracebacks and no lost work (issue 30, items 6-9): every bad-input case through the
``dmdjax`` command as a subprocess ends with one ``dmdjax: error:`` line, its exit status, and
no file changed; resume refuses what it cannot continue before any computation."""

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

import ase.io
import numpy as np
import pytest
from conftest import random_alloy

from dmdjax import cli, dmd, io

pytestmark = pytest.mark.slow  # one Python + JAX start per case


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _dmdjax(*argv, cwd):
    return subprocess.run([sys.executable, "-m", "dmdjax.cli", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _surface_run_json(folder, **changes):
    """A folder that holds the start of a `dmdjax alloy surface --quick` run (run.json only)."""
    from dmdjax.studies.surface import SurfaceParameters

    p = dataclasses.replace(SurfaceParameters.quick(), **changes)
    folder.mkdir()
    io.write_json(folder / "run.json", {"study": "alloy surface", "parameters": dataclasses.asdict(p),
                                        "rate": p.rate, "dtype": "float64"})


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    structure = random_alloy(repeats=(4, 4, 4), noise=0.02, fraction=0.1, seed=4)
    ase.io.write(root / "almg.xyz", structure)
    overlap = structure.copy()
    overlap.positions[3] = overlap.positions[8]
    ase.io.write(root / "overlap.xyz", overlap)
    legacy = structure.copy()
    legacy.new_array("c", np.full(len(legacy), 0.9))
    ase.io.write(root / "legacy.extxyz", legacy, format="extxyz")
    (root / "existing.xyz").write_text("keep me\n")
    (root / "plain-file").write_text("a file, not a folder\n")
    (root / "bad-value.toml").write_text("[chain]\nkt = 0.05\nn_sites = \"abc\"\n")
    (root / "bad-syntax.toml").write_text("[chain]\nkt = = 0.05\n")
    _surface_run_json(root / "damaged")
    (root / "damaged" / "trajectory.npz").write_bytes(b"PK\x03\x04 truncated")
    _surface_run_json(root / "other-settings")
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "notes.txt").write_text("mine\n")
    return root


CASES = {
    # (arguments, exit status, text the error line contains)
    "ambiguous c": (["energy", "legacy.extxyz", "--potential", "AlMg_Mendelev2009", "--temperature", "600"], 2,
                    "does not say which species"),
    "coincident atoms": (["energy", "overlap.xyz", "--potential", "AlMg_Mendelev2009"], 2, "atoms 3 and 8"),
    "build over a file": (["build", "fcc", "-o", "existing.xyz"], 2, "exists: pass --overwrite"),
    "energy over a file": (["energy", "almg.xyz", "--potential", "AlMg_Mendelev2009", "--temperature", "300",
                            "--output", "existing.xyz"], 2, "exists: pass --overwrite"),
    "parent is a file": (["build", "fcc", "-o", "plain-file/child.xyz"], 2, "is a file, not a folder"),
    "study folder is a file": (["chain", "--quick", "--output", "plain-file"], 2, "is a file, not a folder"),
    "zero tolerance": (["energy", "almg.xyz", "--potential", "AlMg_Mendelev2009", "--temperature", "300",
                        "--relax", "--tolerance", "0"], 2, "--tolerance must be finite and > 0"),
    "nan tolerance": (["energy", "almg.xyz", "--potential", "AlMg_Mendelev2009", "--temperature", "300",
                       "--relax", "--tolerance", "nan"], 2, "--tolerance must be finite and > 0"),
    "--set not a number": (["chain", "--quick", "--set", "n_sites=abc", "--output", "never"], 2,
                           "chain parameter n_sites must be an integer; got 'abc'"),
    "--config bad value": (["chain", "--quick", "--config", "bad-value.toml", "--output", "never"], 2,
                           "bad-value.toml', line 3: chain parameter n_sites"),
    "--config bad syntax": (["chain", "--quick", "--config", "bad-syntax.toml", "--output", "never"], 2,
                            "bad-syntax.toml'"),
    "damaged checkpoint": (["alloy", "surface", "--quick", "--resume", "--output", "damaged"], 2,
                           "damaged or truncated"),
    "resume other settings": (["alloy", "surface", "--quick", "--resume", "--concentration", "0.02", "--output",
                               "other-settings"], 2, "concentration: 0.06 -> 0.02"),
    "resume not a run": (["alloy", "surface", "--quick", "--resume", "--output", "not-a-run"], 2,
                         "holds no dmdjax run"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line_and_changes_nothing(case, workspace):
    argv, status, text = CASES[case]
    before = _snapshot(workspace)
    start = time.perf_counter()
    result = _dmdjax(*argv, cwd=workspace)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1 and lines[0].startswith("dmdjax: error: "), result.stderr
    assert text in lines[0]
    assert "Traceback" not in result.stderr
    assert _snapshot(workspace) == before  # nothing written, nothing replaced, nothing removed
    if "resume" in case or "checkpoint" in case:
        assert time.perf_counter() - start < 60  # refused before the statics (minutes)


def test_unwritable_output_is_one_error_line(tmp_path):
    try:  # a folder even root cannot write into (sysfs); skip where this sandbox has none
        os.close(tempfile.mkstemp(dir="/sys")[0])
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    result = _dmdjax("build", "fcc", "-o", "/sys/dmdjax-test.xyz", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "cannot write into '/sys'" in lines[0]


def test_version_and_debug(tmp_path, capsys, monkeypatch):
    result = _dmdjax("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("dmdjax ")

    def fails(args):
        raise RuntimeError("boom")

    def stops(args):
        raise dmd.DMDError("DMD stopped in (0, 1]: the ODE solver failed")

    monkeypatch.setattr(cli, "_run_build", fails)  # the parser looks it up when it is built
    argv = ["build", "fcc", "-o", str(tmp_path / "x.xyz")]
    assert cli.main(argv) == 2
    assert capsys.readouterr().err == "dmdjax: error: RuntimeError: boom (run with --debug for the traceback)\n"
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(argv + ["--debug"])
    monkeypatch.setattr(cli, "_run_build", stops)
    assert cli.main(argv) == cli.NOT_CONVERGED == 3
    assert capsys.readouterr().err.count("\n") == 1


def test_resume_keeps_statics_and_removes_stale_temporary_files(tmp_path):
    """A resumed surface run reuses statics.json and isotherm.json and lists no temporary file."""
    from dmdjax.studies.surface import SurfaceParameters, run_surface_study

    # The smallest slab and no per-species widths: what is tested is the resume, not the study.
    p = SurfaceParameters(cells=(3, 5, 5), t_end=0.3, t_first=0.03, n_outputs=3, isotherm=(0.01,),
                          species_widths=False)
    output = tmp_path / "surface"
    first = run_surface_study(p, output, progress=False, log=lambda *a: None)
    statics = json.loads((output / "statics.json").read_text())
    assert statics == first["segregation_energy_ev"]
    # Cut the run after its first output (as if killed) and leave an interrupted write behind.
    full = dmd.load_trajectory(output / "trajectory.npz")
    full.first(2).save(output / "trajectory.npz")
    (output / ".trajectory.npz.abc123.tmp.npz").write_bytes(b"half")
    again = run_surface_study(p, output, resume=True, progress=False, log=lambda *a: None)
    assert again["wall_time_s"]["statics"] < 1.0 and again["wall_time_s"]["isotherm"] < 1.0
    assert again["segregation_energy_ev"] == first["segregation_energy_ev"]
    assert again["isotherm"] == first["isotherm"]
    assert not any(".tmp" in name for name in again["files"])
    assert not list(output.glob(".*.tmp*"))
    np.testing.assert_array_equal(np.asarray(dmd.load_trajectory(output / "trajectory.npz").order_parameter),
                                  np.asarray(full.order_parameter))
