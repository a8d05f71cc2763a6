"""`vmem demo`, the main job, end to end in its own process (its own Ray and Serve on loopback):
Beam ingest, Ray build, HTTP classify, add a class, forget, every experiment, the report."""
from __future__ import annotations

import json
import os
import sys

import pytest

from tests import native_crash

pytestmark = pytest.mark.slow


def test_demo_runs_every_stage_and_writes_the_report(tmp_path):
    report = tmp_path / "report"
    report.mkdir()
    (report / "pruning.json").write_text("{}")  # a previous run's result: replaced, not kept
    (report / "notes.txt").write_text("mine")  # not the demo's: left alone
    done = native_crash.run(
        [sys.executable, "-m", "vmem", "demo", "--work", str(tmp_path / "work"), "--report", str(report),
         "--train-per-class", "20", "--test-per-class", "6", "--forget", "5", "--encoders",
         "efficientnet-lite0", "--per-class", "1,0", "--device", "cpu"],
        tmp_path, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"})  # a crash in Python prints every thread's stack
    assert done.returncode == 0, native_crash.explain(done, tmp_path)
    assert "Serve and Ray stopped" in done.stdout and "summary" in done.stdout
    # the application is deleted, then Ray stops: no Serve controller killed mid-shutdown
    assert "graceful_shutdown failed" not in done.stdout + done.stderr
    demo = json.loads((report / "demo.json").read_text())
    stages = demo["data"]["stages"]
    assert stages["served"]["new"] == 0.0 and stages["after adding Bag"]["new"] >= 0.5
    assert stages["after adding Bag"]["added"] == 20 and stages["after forgetting"]["forgotten"] == 5
    assert stages["forget"]["returned"] == 0 and stages["forget"]["self_queries"] == 5
    assert stages["after forgetting"]["size"] == stages["after adding Bag"]["size"] - 5
    names = {p.stem for p in report.glob("*.json")}
    assert names == {"demo", "aggregation", "new-classes", "memory-size", "unlearning", "pruning",
                     "label-noise", "interpretability", "reranking"}
    assert (report / "demo.png").read_bytes().startswith(b"\x89PNG")
    assert (report / "notes.txt").read_text() == "mine"
    page = (report / "index.html").read_text()
    assert all(f'id="{name}"' in page for name in names)
