"""`vmem update`, the scheduled ingestion step: idempotent, and safe when it fails midway."""
from __future__ import annotations

import pytest

from indexer.executor import LocalExecutor
from indexer.history import history
from indexer.layout import read_latest
from vmem.update import run_update


def test_daily_updates_build_then_add_and_rerun_is_idempotent(fmnist_shards, tmp_path):
    memory = str(tmp_path / "memory")
    day1 = run_update([str(fmnist_shards / "fashion-mnist-train-000000.tar")], memory, "day-1",
                      LocalExecutor(), shards=2)
    assert (day1["operation"], day1["count"], day1["files_verified"]) == ("build", 40, 7)  # 2 x (index, metadata, key index) + the trained index
    day2 = run_update([str(fmnist_shards / "fashion-mnist-train-000001.tar")], memory, "day-2",
                      LocalExecutor())
    assert (day2["operation"], day2["count"]) == ("add", 80)
    again = run_update([str(fmnist_shards / "fashion-mnist-train-000001.tar")], memory, "day-2",
                       LocalExecutor())
    assert again["version"] == day2["version"] and again["count"] == 80  # nothing added twice
    assert [row["operation"] for row in history(memory)] == ["build", "add"]


def test_a_failed_update_leaves_the_last_version_serving(fmnist_shards, tmp_path, monkeypatch):
    memory = str(tmp_path / "memory")
    first = run_update([str(fmnist_shards / "fashion-mnist-train-000000.tar")], memory, "day-1",
                       LocalExecutor())
    from vmem import update

    def broken_publish(*args, **kwargs):
        raise OSError("object store unavailable")

    monkeypatch.setattr(update, "publish", broken_publish)
    with pytest.raises(OSError):
        run_update([str(fmnist_shards / "fashion-mnist-train-000001.tar")], memory, "day-2",
                   LocalExecutor())
    assert read_latest(memory) == first["version"]
    monkeypatch.undo()
    retried = run_update([str(fmnist_shards / "fashion-mnist-train-000001.tar")], memory, "day-2",
                         LocalExecutor(), skip_ingest_if_present=True)
    assert retried["operation"] == "add" and retried["count"] == 80
