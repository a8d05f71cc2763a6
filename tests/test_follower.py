"""A replica's version: following LATEST, refusing what cannot load, falling back at start
(serving/follower.py, serving/searchers.py); real files, no Serve."""
from __future__ import annotations

import asyncio
import os
import time

import numpy as np
import pytest

from indexer.build import BuildConfig, run_build
from indexer.edit import ForgetRequest, run_delete
from indexer.executor import LocalExecutor
from indexer.layout import set_latest
from indexer.leases import live_leases, renew_lease, wait_until_served
from indexer.segments import CompactionPolicy
from serving.follower import FollowOptions, VersionFollower, VersionUnavailable
from indexer.search import SearchParams
from pipelines.records import api_id
from serving.searchers import SearcherService, ShardQuery, VersionRefused

NEVER = CompactionPolicy(max_tombstone_fraction=1.0, max_segments=1000)
FAST = FollowOptions(version_poll_s=0.01, max_staleness_s=0.2, lease_ttl_s=2.0,
                     min_version_wait_s=0.3, reload_timeout_s=10.0, retry_failed_s=60.0)


@pytest.fixture
def two_versions(memory_copy):
    """A build and a delete on top of it, whose tombstone file is then corrupted."""
    built = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    deleted, _ = run_delete(memory_copy, ForgetRequest(labels=["Bag"]), LocalExecutor(), policy=NEVER)
    return memory_copy, built, deleted


def corrupt(root: str, path: str) -> None:
    with open(f"{root}/index/{path}", "r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"corrupt!")


def added_items(root: str, encoder: str, count: int = 12, seed: int = 5):
    """``count`` items added online (serving/editing.py add_items) on top of LATEST: a delta
    segment per shard reached. Returns (the add's manifest, the items' (count, dim) vectors)."""
    from types import SimpleNamespace

    from indexer.store import resolve_version
    from serving.editing import add_items

    dim = resolve_version(root).dim
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [SimpleNamespace(key=f"new-{i}", label="New", source=None, image_base64=None)
             for i in range(count)]
    return add_items(root, items, vectors, encoder), vectors


async def refuses(root: str, served: str, version: str, match: str) -> SearcherService:
    """A replica serving ``served`` (both shards) refuses the switch to ``version``
    (VersionRefused matching ``match``) and keeps serving ``served`` whole; returns it."""
    service = SearcherService(root, [0, 1], served)
    with pytest.raises(VersionRefused, match=match):
        await service.reload(version)
    assert service.current_version() == served and await service.degraded() == {}
    return service


def test_a_restarted_searcher_never_falls_back_past_a_delete(two_versions):
    """The delete's tombstone file of shard 0 is corrupt: the parent would serve the deleted
    items again, so shard 0 is left out (answers partial, /healthz degraded), not served stale,
    and a replica switching to the delete takes it (the delete holds on shard 1) rather than
    refusing it and serving the deleted items everywhere."""
    root, built, deleted = two_versions
    corrupt(root, deleted.shards[0].tombstones[0].path)

    async def scenario() -> None:
        service = SearcherService(root, [0, 1], deleted.version)  # as a replica restarting
        assert service.current_version() == deleted.version
        degraded = await service.degraded()
        assert list(degraded) == [0] and degraded[0]["serving"] is None
        assert "ChecksumMismatch" in degraded[0]["reason"]
        queries = np.eye(1, built.dim, dtype=np.float32)
        got = await service.search(ShardQuery(queries, 500, SearchParams(), deleted.version))
        assert got.shards == (1,) and got.stale == {}
        assert "Bag" not in set(got.answer.meta["label"][0]) and len(got.answer.ids[0]) > 0
        service.check_health()  # up, saying it is degraded: a restart would meet the same file
        on_build = SearcherService(root, [0, 1], built.version)  # a switch to the broken delete:
        assert await on_build.reload(deleted.version) == deleted.version  # taken, never refused
        got = await on_build.search(ShardQuery(queries, 500, SearchParams(), deleted.version))
        assert got.shards == (1,) and "Bag" not in set(got.answer.meta["label"][0])
        healthy = SearcherService(root, [1], deleted.version)  # shard 1's files are intact
        assert healthy.current_version() == deleted.version and await healthy.degraded() == {}

    asyncio.run(scenario())


def test_a_corrupt_added_segment_is_served_from_the_parent_until_repaired(memory_copy):
    """An add's delta segment of shard 0 is corrupt: shard 0 is answered from the version
    before the add (stale, nothing deleted since), every shard answers, and once the file is
    repaired the replica serves the add's version whole again, without a restart."""
    built = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    added, vectors = added_items(memory_copy, built.encoder)
    delta = added.shards[0].segments[-1].index_path
    assert added.shards[0].segments[-1] not in built.shards[0].segments
    original = open(f"{memory_copy}/index/{delta}", "rb").read()
    corrupt(memory_copy, delta)

    async def scenario() -> None:
        # an add that would newly break shard 0
        await refuses(memory_copy, built.version, added.version, "shard 0: ChecksumMismatch")
        service = SearcherService(memory_copy, [0, 1], added.version)  # a replica restarting
        assert (await service.degraded())[0]["serving"] == built.version
        got = await service.search(ShardQuery(vectors, 1, SearchParams(), added.version))
        assert got.shards == (0, 1) and got.stale == {0: built.version}
        ids = np.array([api_id(f"new-{i}") for i in range(len(vectors))])
        in_shard_1 = ids % 2 == 1  # indexer/tasks.py shard_of
        assert in_shard_1.any() and not in_shard_1.all()
        assert (got.answer.ids[in_shard_1, 0] == ids[in_shard_1]).all()  # shard 1 serves the add
        assert not np.isin(got.answer.ids[:, 0], ids[~in_shard_1]).any()  # shard 0: the parent's
        with open(f"{memory_copy}/index/{delta}", "wb") as handle:
            handle.write(original)
        # a switch to the same version loads the degraded shard's files again (the replica
        # also does so by itself every retry_failed_s: tests/test_consistency.py)
        assert await service.reload(added.version) == added.version
        assert await service.degraded() == {}
        got = await service.search(ShardQuery(vectors, 1, SearchParams(), added.version))
        assert got.stale == {} and (got.answer.ids[:, 0] == ids).all()

    asyncio.run(scenario())


def test_a_delete_elsewhere_does_not_stop_a_shard_s_fallback(memory_copy):
    """A delete that left shard 0's entry unchanged (it forgot an item of shard 1) cannot have
    hidden anything there: a corrupt file of shard 0 is served from the version before the
    add, past the delete, while shard 1 keeps the delete (indexer/history.py fallback_versions).
    A purging compaction would stop the walk (its parent still holds the purged bytes)."""
    built = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    added, vectors = added_items(memory_copy, built.encoder)
    ids = np.array([api_id(f"new-{i}") for i in range(len(vectors))])
    gone = int(ids[ids % 2 == 1][0])
    deleted, _ = run_delete(memory_copy, ForgetRequest(ids=[gone]), LocalExecutor(), policy=NEVER)
    assert deleted.shards[0] == added.shards[0] and deleted.shards[1] != added.shards[1]
    corrupt(memory_copy, deleted.shards[0].segments[-1].index_path)  # the add's delta of shard 0

    async def scenario() -> None:
        service = SearcherService(memory_copy, [0, 1], deleted.version)
        assert await service.degraded() == {0: {"serving": built.version,
                                                 "reason": (await service.degraded())[0]["reason"]}}
        got = await service.search(ShardQuery(vectors, 3, SearchParams(), deleted.version))
        assert got.shards == (0, 1) and got.stale == {0: built.version}
        assert gone not in got.answer.ids  # shard 1 serves the delete
        on_shard_1 = (ids % 2 == 1) & (ids != gone)
        assert (got.answer.ids[on_shard_1, 0] == ids[on_shard_1]).all()

    asyncio.run(scenario())


def test_a_retry_that_fails_backs_off_and_keeps_serving(memory_copy, monkeypatch):
    """A degraded group's retry whose load raises (storage unavailable) is logged, backs off
    like a retry that still fails, and the group keeps answering as before: not a new load on
    every query."""
    built = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    added, vectors = added_items(memory_copy, built.encoder)
    corrupt(memory_copy, added.shards[0].segments[-1].index_path)
    monkeypatch.setattr(SearcherService, "retry_failed_s", 0.5)

    async def scenario() -> None:
        service = SearcherService(memory_copy, [0, 1], added.version)
        loads: list[str] = []

        def unavailable(version: str, fallback: bool = True):
            loads.append(version)
            raise OSError("storage unavailable")

        monkeypatch.setattr(service, "_load", unavailable)
        await asyncio.sleep(0.6)
        started = time.monotonic()
        for _ in range(20):
            got = await service.search(ShardQuery(vectors, 1, SearchParams(), added.version))
            assert got.stale == {0: built.version} and got.shards == (0, 1)
            if service._retrying is not None:
                await service._retrying
        assert time.monotonic() - started < 1.0  # all within the backed-off interval (1 s)
        assert loads == [added.version]

    asyncio.run(scenario())


def test_a_broken_purging_compaction_is_refused_and_never_a_fallback(memory_copy):
    """A compaction that purged rows, with a bad file: a replica serving the delete before it
    refuses to switch (the delete hides the same items; its files it already holds), and a
    replica restarting on the compaction leaves the shard out rather than load the delete's
    files, which still hold the purged bytes."""
    from indexer.edit import run_compact

    built = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    deleted, _ = run_delete(memory_copy, ForgetRequest(labels=["Bag"]), LocalExecutor(), policy=NEVER)
    compacted = run_compact(memory_copy, LocalExecutor())
    assert compacted.operation == "compact" and compacted.details["purged"]
    corrupt(memory_copy, compacted.shards[0].segments[0].index_path)

    async def scenario() -> None:
        await refuses(memory_copy, deleted.version, compacted.version, "shard 0")
        restarted = SearcherService(memory_copy, [0, 1], compacted.version)
        assert (await restarted.degraded())[0]["serving"] is None
        queries = np.eye(1, built.dim, dtype=np.float32)
        got = await restarted.search(ShardQuery(queries, 500, SearchParams(), compacted.version))
        assert got.shards == (1,) and "Bag" not in set(got.answer.meta["label"][0])

    asyncio.run(scenario())


def test_the_follower_switches_refuses_and_waits_for_min_version(two_versions, monkeypatch):
    root, built, deleted = two_versions
    loaded: list[str] = []
    import serving.follower

    def slow_renew(*args, **kwargs):  # a slow store: the lease must still be written first
        time.sleep(0.1)
        renew_lease(*args, **kwargs)

    monkeypatch.setattr(serving.follower, "renew_lease", slow_renew)

    async def switch(version: str) -> None:
        if version.endswith("-broken"):
            raise RuntimeError("ChecksumMismatch: a corrupt file")
        loaded.append(version)

    async def scenario() -> None:
        follower = VersionFollower(root, built.version, switch, FAST, holder="replica-a")
        follower.start()
        assert await follower.ensure(deleted.version) == deleted.version  # min_version: waits, then served
        assert loaded == [deleted.version]
        assert live_leases(root)["replica-a"] == deleted.version
        assert (await asyncio.to_thread(wait_until_served, root, deleted.version, 1.0))["lagging"] == []

        broken = deleted.version + "-broken"
        set_latest(root, broken)
        await asyncio.sleep(0.1)
        status = follower.status()
        assert follower.version == deleted.version and status["status"] == "degraded"
        assert "ChecksumMismatch" in status["refused_versions"][broken]
        with pytest.raises(VersionUnavailable):
            await follower.ensure(broken)
        served = await asyncio.to_thread(wait_until_served, root, broken, 0.2)
        assert served["lagging"] == ["replica-a"]  # an edit would report the lagging replica
        follower.stop()
        assert "replica-a" not in live_leases(root)

    asyncio.run(scenario())


def test_the_follower_starts_on_the_newest_ancestor_before_no_delete(two_versions):
    """At start a LATEST that cannot load is replaced by its parent across an add, never
    across a delete (the parent would serve forgotten items)."""
    root, built, deleted = two_versions
    added, _ = added_items(root, built.encoder)
    broken = {added.version}

    async def switch(version: str) -> None:
        if version in broken:
            raise RuntimeError("cannot load")

    async def scenario(latest: str) -> str:
        follower = VersionFollower(root, "", switch, FAST, holder="replica-b")
        try:
            served = await follower.start_on_loadable(latest)
            assert follower.status()["status"] == "degraded"  # serving an ancestor of LATEST, and saying so
            assert latest in follower.status()["refused_versions"]
            return served
        finally:
            follower.stop()

    assert asyncio.run(scenario(added.version)) == deleted.version  # back across the add
    broken.add(deleted.version)
    with pytest.raises(RuntimeError, match="without a deletion"):
        asyncio.run(scenario(added.version))  # the build before the delete is never served


def test_an_unchanged_corrupt_file_is_hashed_once(tmp_path, monkeypatch):
    """indexer/checksums.py: a file that failed its checksum and has not changed since fails
    again without being read (a corrupt file several versions share is tried for each); once
    rewritten (repaired) it is hashed again."""
    from indexer import checksums

    path = tmp_path / "segment.faiss"
    expected = checksums.sha256_bytes(b"good bytes")
    path.write_bytes(b"bad bytes!!")
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    hashed: list[str] = []
    real = checksums.sha256_file
    monkeypatch.setattr(checksums, "sha256_file", lambda url: hashed.append(url) or real(url))
    for _ in range(3):
        with pytest.raises(checksums.ChecksumMismatch, match="does not match"):
            checksums.verify_file(str(path), expected)
    assert len(hashed) == 1
    stat = path.stat()
    path.write_bytes(b"bad bytes!")  # the same size ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... and mtime: still noticed
    with pytest.raises(checksums.ChecksumMismatch):
        checksums.verify_file(str(path), expected)
    assert len(hashed) == 2
    path.write_bytes(b"good bytes")  # repaired, its mtime restored as `cp -p` would
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    checksums.verify_file(str(path), expected)
    assert len(hashed) == 3


def test_a_refusal_reason_is_the_remote_cause_without_colour_codes():
    """A searcher's refusal reaches the router as a Ray task error whose text is the remote
    traceback, coloured for a terminal: /healthz and the 503 give its cause in one line."""
    from ray.exceptions import RayTaskError

    from serving.follower import reason

    remote = RayTaskError("reload", "\x1b[36mTraceback (most recent call last):\x1b[0m\n  ...",
                          ValueError("checksum mismatch: shard-00001.faiss"))
    assert reason(remote) == reason(remote.as_instanceof_cause()) == "ValueError: checksum mismatch: shard-00001.faiss"
    assert reason(OSError("\x1b[31mgone\x1b[0m")) == "OSError: gone"


def test_a_corrupt_rebuild_is_refused_and_the_version_before_it_keeps_serving(memory_copy):
    """A new build over every batch whose shard 1 file is corrupt: a replica serving the
    version before it keeps serving that one whole (it already hid every item the build
    hides: indexer.history ``stands_in``), VersionRefused naming the shard. Past a delete, or
    for a build that left a batch out (its items were meant to go), the build is taken and
    the failing shard left out, never served from another build's files. A replica that
    starts on the broken build finds the version before it stands in whole (``left_out``,
    ``whole_stand_ins``)."""
    from indexer.history import stands_in
    from serving.follower import whole_stand_ins

    first = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    second = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    assert second.parent == first.version and second.batches == first.batches
    corrupt(memory_copy, second.shards[1].segments[0].index_path)

    async def scenario() -> str:
        service = await refuses(memory_copy, first.version, second.version, "shard 1: ChecksumMismatch")
        # a replica (re)started on the broken build would leave shard 1 out (another build's
        # files never stand in per shard): the probe says so without switching, and the
        # version before it stands in whole (serving/router.py _start_version starts there)
        missing = await service.left_out(second.version)
        assert list(missing) == [1] and "ChecksumMismatch" in missing[1]
        assert service.current_version() == first.version  # probed, not served
        assert whole_stand_ins(memory_copy, second.version) == [first.version]
        assert await service.left_out(first.version) == {}
        narrower = run_build(BuildConfig(memory_copy, batches=["train-a"], num_shards=2), LocalExecutor())
        corrupt(memory_copy, narrower.shards[1].segments[0].index_path)
        assert not stands_in(memory_copy, narrower, second.version)
        assert await service.reload(narrower.version) == narrower.version
        assert (await service.degraded())[1]["serving"] is None  # left out
        return narrower.version

    narrower = asyncio.run(scenario())
    wide = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())  # every batch again
    deleted, _ = run_delete(memory_copy, ForgetRequest(labels=["Bag"]), LocalExecutor(), policy=NEVER)
    third = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    assert stands_in(memory_copy, third, deleted.version)  # the build over the delete
    assert stands_in(memory_copy, wide, narrower)  # a build over more batches
    assert not stands_in(memory_copy, third, wide.version)  # past the delete: Bag would come back
    assert whole_stand_ins(memory_copy, third.version) == [deleted.version]


def test_no_group_switches_to_a_version_another_group_refuses(memory_copy):
    """Two searcher groups (shard 0, shard 1) serving a build; a rebuild whose shard 1 file is
    corrupt. The router's strict switch (serving/searchers.py ``switch_groups``) is refused
    naming shard 1 and shard 0's group never serves the rebuild either, nor keeps its
    segments: switched one phase only, it switched and then back on the next query, loading
    both versions again at every retry. A whole version then switches both groups."""
    from serving.searchers import switch_groups

    first = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    second = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
    corrupt(memory_copy, second.shards[1].segments[0].index_path)

    def cached_paths(group: SearcherService) -> set[str]:
        return {key[0] for key in group.cache.segments}

    async def scenario() -> None:
        groups = [SearcherService(memory_copy, [shard], first.version) for shard in (0, 1)]
        assert await groups[0].refusal(second.version) == {}
        for attempt in range(2):  # the first try and a retry alike
            with pytest.raises(VersionRefused, match="shard 1: ChecksumMismatch") as refused:
                await switch_groups(groups, second.version)
            assert list(refused.value.broken) == [1]
            assert [g.current_version() for g in groups] == [first.version] * 2
            assert not cached_paths(groups[0]) & {s.index_path for e in second.shards for s in e.segments}
            assert [await g.degraded() for g in groups] == [{}, {}]
        third = run_build(BuildConfig(memory_copy, num_shards=2), LocalExecutor())
        await switch_groups(groups, third.version)
        assert [g.current_version() for g in groups] == [third.version] * 2

    asyncio.run(scenario())
