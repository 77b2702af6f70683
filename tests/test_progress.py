"""Progress display: bars on a terminal, plain lines in log files."""

from __future__ import annotations

import io
import logging
import subprocess
import sys

from geofm import cli
from geofm.progress import PlainProgress, interactive, progress_bar


def test_plain_progress_prints_whole_lines_at_intervals_and_at_the_end():
    out = io.StringIO()
    bar = PlainProgress(total=4, desc="ingest", unit="tasks", every_s=3600, stream=out)
    for _ in range(3):
        bar.update()
    assert out.getvalue() == ""  # nothing due yet
    bar.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ingest: 4/4 tasks (100%), ")
    bar.close()  # nothing new since the last line
    assert len(out.getvalue().splitlines()) == 1 and "\r" not in out.getvalue()
    every = PlainProgress(total=None, desc="runs", unit="runs", every_s=0, stream=out)
    every.update()
    every.set_postfix_str("full 0.5 seed 1")
    every.update()
    assert out.getvalue().splitlines()[-1].startswith("runs: 2 runs, ") and "full 0.5 seed 1" in out.getvalue()


def test_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("GEOFM_PROGRESS", raising=False)
    assert not interactive(io.StringIO())
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert isinstance(progress_bar(total=3), PlainProgress)
    monkeypatch.setenv("GEOFM_PROGRESS", "bar")
    assert not isinstance(progress_bar(total=3, disable=True), PlainProgress)


def test_help_imports_no_subcommand_module():
    """``geofm --help`` lists every command without importing torch, Lightning or a subcommand module."""
    code = ("import sys; from geofm import cli; cli.build_parser().format_help(); "
            "heavy = [m for m in ('torch', 'lightning', 'dask', 'rasterio', 'zarr') if m in sys.modules]; "
            "mods = [m for m, _ in cli.COMMANDS.values() if m in sys.modules]; print(heavy + mods)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
    help_text = cli.build_parser().format_help()
    for name in cli.COMMANDS:
        assert name in help_text
    assert cli.command_of(["-v", "ingest", "x"]) == "ingest" and cli.command_of(["nope"]) is None


def test_subcommand_help_imports_no_heavy_module():
    """Each subcommand's argument module is light: ``geofm COMMAND --help`` never imports torch or Lightning."""
    code = ("import importlib, sys; from geofm import cli; "
            "[importlib.import_module(m).add_arguments(cli.argparse.ArgumentParser()) for m, _ in cli.COMMANDS.values()]; "
            "print([m for m in ('torch', 'lightning') if m in sys.modules])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_engine_logs_stay_quiet_after_lightning_is_imported():
    """Lightning resets its loggers to INFO on import (after the CLI's set-up); the trainer builders re-apply it."""
    code = ("import logging; from geofm.runtime import quiet_engine_logs; quiet_engine_logs(logging.WARNING); "
            "import lightning.pytorch; reset = logging.getLogger('lightning.pytorch').level; quiet_engine_logs(); "
            "print(reset, logging.getLogger('lightning.pytorch.utilities.rank_zero').getEffectiveLevel())")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == [str(logging.INFO), str(logging.WARNING)]
