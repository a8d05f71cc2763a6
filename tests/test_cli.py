"""The `vmem` entry point and every job's --help."""
from __future__ import annotations

import subprocess
import sys

import pytest

from vmem.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmem", *args], capture_output=True, text=True,
                          timeout=120)


def test_top_level_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "ingest" in out.stdout and "data" in out.stdout


@pytest.mark.parametrize("command, expected", [
    ("ingest", ["--input", "--memory", "--encoder", "--weights", "--runner", "DataflowRunner"]),
    ("data", ["fashion-mnist"]),
    ("index", ["build", "add", "delete", "compact", "forget-status", "prune", "log", "rollback", "verify", "gc"]),
    ("serve", ["--memory", "--port", "--config"]),
    ("classify", ["--queries", "--out", "--aggregator"]),
    ("eval", ["aggregation", "new-classes", "memory-size", "unlearning", "pruning", "label-noise",
              "interpretability", "reranking", "all", "report"]),
    ("demo", ["--train-per-class", "--new-class", "--forget", "--no-experiments"]),
    ("update", ["--input", "--memory", "--batch", "--reload-url"]),
])
def test_command_help_explains_options(command, expected, capsys):
    # In-process (the entry point's own dispatch, `vmem.cli.main`): a subprocess per command
    # would import Beam and torch again for each; the tests above and the jobs' own tests run
    # `python -m vmem` as a process.
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_unknown_command_is_an_error():
    out = run("fly")
    assert out.returncode == 2 and "unknown command" in out.stderr
