"""The direct data plane's parts without Serve: coalesced searches and the shared port
(the Serve-level tests are in test_consistency.py, on the shipped topology)."""
from __future__ import annotations

import asyncio
import json
import socket

import pytest

from serving.coalesce import Coalescer
from serving.data_plane import PortTaken, claim_port, listening, reuse_port_socket


def test_concurrent_calls_share_one_batch_and_a_lone_call_runs_alone():
    seen: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        seen.append(list(items))
        return [2 * item for item in items]

    async def main():
        coalescer = Coalescer(double, max_batch=4)
        alone = await coalescer(21)
        together = await asyncio.gather(*[coalescer(i) for i in range(10)])
        return alone, together, coalescer.batches

    alone, together, batches = asyncio.run(main())
    assert alone == 42 and together == [2 * i for i in range(10)]
    assert seen == [[21], [0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and batches == 4


def test_a_failing_batch_fails_its_callers_and_a_cancelled_caller_is_skipped():
    async def picky(items: list[int]) -> list[int]:
        if 13 in items:
            raise ValueError("unlucky batch")
        await asyncio.sleep(0)
        return items

    async def main():
        coalescer = Coalescer(picky)
        failing = await asyncio.gather(coalescer(1), coalescer(13), return_exceptions=True)
        slow = asyncio.ensure_future(coalescer(5))
        await asyncio.sleep(0)
        slow.cancel()
        after = await asyncio.gather(coalescer(6), coalescer(7))
        return failing, slow.cancelled(), after

    failing, cancelled, after = asyncio.run(main())
    assert all(isinstance(error, ValueError) for error in failing)
    assert cancelled and after == [6, 7]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_replicas_share_the_port_and_another_application_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("VMEM_RUN_DIR", str(tmp_path))
    port = _free_port()
    claim_port("127.0.0.1", port, "app@/memory/a")
    first = reuse_port_socket("127.0.0.1", port)
    try:
        claim_port("127.0.0.1", port, "app@/memory/a")  # a second replica of the same app
        second = reuse_port_socket("127.0.0.1", port)
        second.close()
        assert listening("127.0.0.1", port)
        with pytest.raises(PortTaken, match="another data_plane_port"):
            claim_port("127.0.0.1", port, "app@/memory/b")  # would mix two memories' answers
    finally:
        first.close()
    assert not listening("127.0.0.1", port)
    claim_port("127.0.0.1", port, "app@/memory/b")  # a stale claim: nothing listens any more
    claims = json.loads((tmp_path / f"vmem-data-plane-{port}.json").read_text())
    assert claims["identity"] == "app@/memory/b"


def test_a_stopped_application_leaves_no_claim_files(tmp_path, monkeypatch):
    """`vmem serve` and the demo (serving.serve.take_down) remove their application's claim and
    its lock file once nothing listens on the port; another application's claim, and a claim
    whose port still has a listener, stay."""
    from ray import serve

    from serving.data_plane import identity_of, release_claims
    from serving.serve import take_down

    monkeypatch.setenv("VMEM_RUN_DIR", str(tmp_path))
    ours, theirs = _free_port(), _free_port()
    claim_port("127.0.0.1", ours, identity_of("visual-memory", "/memory/a"))
    claim_port("127.0.0.1", theirs, identity_of("other", "/memory/b"))
    listener = reuse_port_socket("127.0.0.1", ours)
    try:
        assert release_claims("visual-memory") == []  # a replica still serves the port
    finally:
        listener.close()
    assert (tmp_path / f"vmem-data-plane-{ours}.json").exists()
    monkeypatch.setattr(serve, "delete", lambda name: None)  # Serve's part, not started here
    import ray

    # nor is this process's Ray ours to stop: the session's instance (conftest.ray_executor)
    # serves the tests after this one, and a task submitted with Ray down starts a plain one
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    take_down("visual-memory", joined=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"vmem-data-plane-{theirs}.json",
                                                         f"vmem-data-plane-{theirs}.json.lock"]
    claim_port("127.0.0.1", ours, identity_of("visual-memory", "/memory/a"))  # the port claims again
