"""A replica's version: following LATEST, refusing what cannot load, falling back at start
(serving/follower.py, serving/searchers.py); real files, no Serve."""
from __future__ import annotations

import asyncio
import time

import pytest

from indexer.build import BuildConfig, run_build
from indexer.edit import ForgetRequest, run_delete
from indexer.executor import LocalExecutor
from indexer.layout import set_latest
from indexer.leases import live_leases, renew_lease, wait_until_served
from indexer.segments import CompactionPolicy
from serving.follower import FollowOptions, VersionFollower, VersionUnavailable
from serving.searchers import SearcherService

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


def test_a_restarted_searcher_falls_back_to_a_loadable_version(two_versions):
    root, built, deleted = two_versions
    corrupt(root, deleted.shards[0].tombstones[0].path)
    service = SearcherService(root, [0, 1], deleted.version)  # as a replica restarting on LATEST
    assert service.current_version() == built.version  # the parent: every file verifies
    service.check_health()  # and it answers
    healthy = SearcherService(root, [1], deleted.version)  # shard 1's files are intact
    assert healthy.current_version() == deleted.version


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


def test_the_follower_starts_on_the_newest_loadable_ancestor(two_versions):
    root, built, deleted = two_versions

    async def switch(version: str) -> None:
        if version == deleted.version:
            raise RuntimeError("cannot load")

    async def scenario() -> str:
        follower = VersionFollower(root, "", switch, FAST, holder="replica-b")
        served = await follower.start_on_loadable(deleted.version)
        assert follower.status()["status"] == "degraded"  # serving an ancestor of LATEST, and saying so
        assert deleted.version in follower.status()["refused_versions"]
        follower.stop()
        return served

    assert asyncio.run(scenario()) == built.version
