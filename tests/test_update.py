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
    """`vmem update --incoming`: each complete folder (its upload wrote _SUCCESS last) is a
    batch; a round publishes every one the memory does not serve yet, oldest first; a batch a
    killed round had already embedded is published without being embedded again."""
    import shutil

    from pipelines.ingest import IngestConfig, run_ingest
    from pipelines.manifest import BatchManifest
    from vmem.update import pending_batches, run_pending

    incoming, memory = tmp_path / "incoming", str(tmp_path / "memory")

    def upload(day: str, shard: str, done: bool = True) -> None:
        (incoming / day).mkdir(parents=True, exist_ok=True)
        shutil.copy(fmnist_shards / shard, incoming / day)
        if done:
            (incoming / day / "_SUCCESS").write_bytes(b"")

    upload("2026-11-01", "fashion-mnist-train-000000.tar")
    upload("2026-11-02", "fashion-mnist-train-000001.tar")
    upload("2026-11-03", "fashion-mnist-test-000000.tar", done=False)  # still uploading
    first = run_pending(str(incoming), memory, LocalExecutor(), shards=2)
    assert [(r["batch"], r["operation"], r["count"]) for r in first] == [
        ("2026-11-01", "build", 40), ("2026-11-02", "add", 80)]
    assert run_pending(str(incoming), memory, LocalExecutor()) == []  # nothing complete pending
    # The upload completes; a round embeds the batch and is killed before publishing it.
    (incoming / "2026-11-03" / "_SUCCESS").write_bytes(b"")
    ((name, inputs),) = pending_batches(str(incoming), memory)
    assert (name, inputs) == ("2026-11-03", [str(incoming / "2026-11-03" / "fashion-mnist-test-000000.tar")])
    run_ingest(IngestConfig(inputs=inputs, memory=memory, batch=name))
    embedded = BatchManifest.read(memory, name).created
    resumed = run_pending(str(incoming), memory, LocalExecutor())
    assert [(r["batch"], r["operation"], r["count"]) for r in resumed] == [("2026-11-03", "add", 120)]
    assert BatchManifest.read(memory, name).created == embedded  # not embedded again
    assert [row["operation"] for row in history(memory)] == ["build", "add", "add"]
    # What a round refuses, naming it: a missing folder, two formats in one batch, odd names.
    with pytest.raises(FileNotFoundError, match="--incoming"):
        pending_batches(str(tmp_path / "nowhere"), memory)
    upload("2026-11-04", "fashion-mnist-test-000001.tar")
    (incoming / "2026-11-04" / "part.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="both .tar and .parquet"):
        pending_batches(str(incoming), memory)
    shutil.rmtree(incoming / "2026-11-04")
    upload("day {1,2}", "fashion-mnist-test-000001.tar")
    with pytest.raises(ValueError, match="batch folder is named"):
        pending_batches(str(incoming), memory)


def test_a_round_starts_its_executor_only_to_publish(fmnist_shards, tmp_path, monkeypatch):
    """The executor (a Ray instance, unless --no-ray) is made when a batch is published, once;
    a round with nothing pending makes none (indexer.executor.DeferredExecutor)."""
    import shutil

    from indexer.executor import DeferredExecutor
    from vmem import update

    incoming, memory = tmp_path / "incoming", str(tmp_path / "memory")
    (incoming / "2026-11-01").mkdir(parents=True)
    shutil.copy(fmnist_shards / "fashion-mnist-train-000000.tar", incoming / "2026-11-01")
    (incoming / "2026-11-01" / "_SUCCESS").write_bytes(b"")
    made = []
    deferred = DeferredExecutor(lambda: made.append(1) or LocalExecutor())
    assert not deferred.made and made == []
    (summary,) = update.run_pending(str(incoming), memory, deferred)
    assert summary["count"] == 40 and deferred.made and made == [1]  # made once, at publish

    def no_executor(*args, **kwargs):
        raise AssertionError("a round with nothing pending made an executor")

    monkeypatch.setattr(update, "make_executor", no_executor)
    assert update.main(["--incoming", str(incoming), "--memory", memory]) == 0


def test_new_batches_take_the_memory_encoder_and_another_is_refused_before_embedding(tmp_path, capsys):
    """`vmem update` embeds with the encoder and weights that embedded the memory (a memory
    built with another encoder than the default must not get default-encoder batches, which
    the index step would refuse only after they were committed); a different --encoder or
    --weights is a usage error, raised before anything is read or embedded."""
    from pipelines.manifest import BatchManifest, list_batches
    from vmem import update

    memory = str(tmp_path / "memory")
    assert update.resolve_encoder(memory, None, None) == ("efficientnet-lite0", "")  # empty memory
    assert update.resolve_encoder(memory, "timm:vit_small_patch14_dinov2.lvd142m", None) == \
        ("timm:vit_small_patch14_dinov2.lvd142m", "")
    BatchManifest(batch="day-1", run_id="r1", created="2026-12-02T00:00:00+00:00",
                  encoder="efficientnet-lite1", dim=1280, weights="/models/lite1.safetensors").write(memory)
    assert update.resolve_encoder(memory, None, None) == ("efficientnet-lite1", "/models/lite1.safetensors")
    assert update.resolve_encoder(memory, "efficientnet-lite1", None)[0] == "efficientnet-lite1"
    with pytest.raises(ValueError, match="embedded by efficientnet-lite1"):
        update.resolve_encoder(memory, "efficientnet-lite0", None)
    with pytest.raises(ValueError, match="weights /models/lite1.safetensors"):
        update.resolve_encoder(memory, None, "")
    with pytest.raises(SystemExit) as exited:
        update.main(["--input", str(tmp_path / "missing-*.tar"), "--batch", "day-2", "--memory", memory,
                     "--no-ray", "--encoder", "efficientnet-lite0"])
    assert exited.value.code == 2
    assert "--encoder efficientnet-lite0: the memory's batches were embedded by efficientnet-lite1" \
        in capsys.readouterr().err
    assert list_batches(memory) == ["day-1"]  # nothing embedded, nothing committed


def test_update_reads_and_embeds_as_ingest_options_say_with_the_memory_encoder(fmnist_shards, tmp_path, capsys):
    """End to end through `vmem update`'s parser: day 1 embedded by efficientnet-lite1 with an
    ingest option (--label-from); day 2, given no --encoder, is embedded by lite1 too and added
    to the same index (the default encoder's batch would have been refused as incompatible)."""
    import json

    from pipelines.manifest import BatchManifest
    from vmem import update

    memory = str(tmp_path / "memory")
    common = ["--memory", memory, "--no-ray", "--label-from", "json:label;cls", "--batch-size", "8"]
    assert update.main(["--input", str(fmnist_shards / "fashion-mnist-train-000000.tar"),
                        "--batch", "day-1", "--encoder", "efficientnet-lite1", *common]) == 0
    assert update.main(["--input", str(fmnist_shards / "fashion-mnist-train-000001.tar"),
                        "--batch", "day-2", *common]) == 0
    day2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (day2["operation"], day2["count"], day2["embedded"]) == ("add", 80, 40)
    assert {BatchManifest.read(memory, b).encoder for b in ("day-1", "day-2")} == {"efficientnet-lite1"}
