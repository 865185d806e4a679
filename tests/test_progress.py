"""Progress and log output: log lines (no carriage returns) off a terminal, --quiet / --verbose."""

import logging
import subprocess
import sys

import pytest

from dmdjax import progress


def test_off_a_terminal_progress_is_periodic_log_lines(caplog, monkeypatch):
    monkeypatch.setattr(progress, "interactive", lambda: False)
    caplog.set_level(logging.INFO, logger="dmdjax")
    items = list(progress.track(range(5), "work", "step"))
    assert items == list(range(5))
    lines = [r.getMessage() for r in caplog.records if r.name == "dmdjax"]
    assert lines[-1].startswith("work: 5/5 step (100 %)")  # the final line; none between (interval 30 s)
    caplog.clear()
    with progress.Progress(3, "fit", "step", interval=0.0) as bar:
        for value in (3.0, 2.0, 1.0):
            bar.update(1, loss=value)
    lines = [r.getMessage() for r in caplog.records if r.name == "dmdjax"]
    assert lines[:3] == [line for line in lines[:3] if line.startswith("fit: ")] and len(lines) == 4
    assert "loss=1" in lines[-1] and all("\r" not in line for line in lines)
    caplog.clear()
    assert list(progress.track([1, 2], "quiet", enabled=False)) == [1, 2]
    assert not caplog.records


@pytest.mark.slow
def test_chain_quick_redirected_writes_plain_lines(tmp_path):
    """`dmdjax chain --quick > log.txt`: progress as log lines, no carriage return in either stream."""
    command = [sys.executable, "-c", "from dmdjax.cli import main; raise SystemExit(main())", "chain", "--quick",
               "--output", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"\r" not in done.stdout and b"\r" not in done.stderr
    assert b"DMD " in done.stdout  # the intervals' progress lines (at least the final one per run)


def test_quiet_and_verbose_set_the_level():
    """--quiet: warnings only and no progress; --verbose: debug; either anywhere on the line."""
    import argparse

    from dmdjax import cli

    for flags, level, progress_off in (([], logging.INFO, False), (["--quiet"], logging.WARNING, True),
                                       (["-v"], logging.DEBUG, False)):
        args = argparse.Namespace(quiet="--quiet" in flags, verbose="-v" in flags, no_progress=False)
        cli.configure_logging(args)
        assert progress.logger.level == level and args.no_progress == progress_off
        assert sum(getattr(h, "_dmdjax_cli", False) for h in progress.logger.handlers) == 1
