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


def test_incoming_rounds_publish_every_pending_batch_once(fmnist_shards, tmp_path):
    """`vmem update --incoming`: each folder is a batch; a round publishes every folder the
    memory does not serve yet, oldest first; a batch a killed round had already embedded is
    published without being embedded again; folders named _x or .x are uploads in progress."""
    import shutil

    from pipelines.ingest import IngestConfig, run_ingest
    from pipelines.manifest import BatchManifest
    from vmem.update import pending_batches, run_pending

    incoming, memory = tmp_path / "incoming", str(tmp_path / "memory")
    for day, shard in (("2026-11-01", 0), ("2026-11-02", 1)):
        (incoming / day).mkdir(parents=True)
        shutil.copy(fmnist_shards / f"fashion-mnist-train-00000{shard}.tar", incoming / day)
    (incoming / "_2026-11-03").mkdir()  # still uploading
    first = run_pending(str(incoming), memory, LocalExecutor(), shards=2)
    assert [(r["batch"], r["operation"], r["count"]) for r in first] == [
        ("2026-11-01", "build", 40), ("2026-11-02", "add", 80)]
    assert run_pending(str(incoming), memory, LocalExecutor()) == []  # nothing pending
    # A round killed after embedding 2026-11-03 and before publishing it.
    (incoming / "_2026-11-03").rename(incoming / "2026-11-03")
    shutil.copy(fmnist_shards / "fashion-mnist-test-000000.tar", incoming / "2026-11-03")
    run_ingest(IngestConfig(inputs=[str(incoming / "2026-11-03" / "*.tar")], memory=memory,
                            batch="2026-11-03"))
    embedded = BatchManifest.read(memory, "2026-11-03").created
    assert [b for b, _ in pending_batches(str(incoming), memory)] == ["2026-11-03"]
    resumed = run_pending(str(incoming), memory, LocalExecutor())
    assert [(r["batch"], r["operation"], r["count"]) for r in resumed] == [("2026-11-03", "add", 120)]
    assert BatchManifest.read(memory, "2026-11-03").created == embedded  # not embedded again
    assert [row["operation"] for row in history(memory)] == ["build", "add", "add"]
    with pytest.raises(FileNotFoundError, match="--incoming"):
        pending_batches(str(tmp_path / "nowhere"), memory)
