"""The single writer: one Serve deployment (one replica) through which every online edit goes.

Routers authenticate and validate an edit, then hand it here; the writer runs edits one at a
time (an asyncio lock, plus the memory's file lock shared with the CLI and scheduled jobs:
indexer/leases.py), publishes a version, and returns only when every serving replica serves it
(their leases; indexer/leases.py ``wait_until_served``), so a deleted item is never returned
after the delete returns, by any replica. A failed edit commits nothing (serving/editing.py).
Expected failures come back as data (``EditFailure``), so routers answer them as JSON 4xx/5xx.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np
from ray import serve

from indexer.edit import compact_if_due
from indexer.executor import LocalExecutor
from indexer.forgotten import ForgottenIds
from indexer.layout import read_latest
from indexer.layout import ConcurrentEdit
from indexer.leases import WriterBusy, wait_until_served
from indexer.reader import DuplicateIds
from indexer.segments import DEFAULT_POLICY, CompactionPolicy
from serving.editing import add_items, forget_items

log = logging.getLogger("ray.serve")


@dataclass
class EditFailure:
    status: int
    field: str
    message: str


class WriterService:
    """The writer's logic (also usable in-process). ``confirm_timeout_s`` bounds the wait for
    replicas; it should exceed the replicas' lease TTL, after which a silent replica re-reads
    LATEST before answering anyway."""

    def __init__(self, memory: str, confirm_timeout_s: float = 12.0,
                 policy: CompactionPolicy = DEFAULT_POLICY) -> None:
        self.memory, self.confirm_timeout_s, self.policy = memory, confirm_timeout_s, policy
        self.lock = asyncio.Lock()
        self.compaction: asyncio.Task | None = None

    def _compact_later(self) -> None:
        """After an edit has returned: compact the shards past the policy (a new version the
        replicas follow like any other), one compaction at a time, beside the edits."""
        if self.compaction is None or self.compaction.done():
            self.compaction = asyncio.get_running_loop().create_task(self._compact())

    async def _compact(self) -> None:
        """Not under the edit lock: compact_if_due works on a snapshot and takes the memory's
        writer lock only to rebase and publish, so edits go on while it runs."""
        try:
            await asyncio.to_thread(compact_if_due, self.memory, LocalExecutor(progress=False), self.policy)
        except Exception:
            log.exception("background compaction failed; the memory stays uncompacted")

    async def _confirm(self, version: str) -> dict:
        return await asyncio.to_thread(wait_until_served, self.memory, version, self.confirm_timeout_s)

    async def _run(self, work, field: str, refusals: tuple[tuple[type, int], ...]):
        """Run one edit (a blocking callable) under the edit lock, then wait for the replicas.
        Returns (result, replicas) or an EditFailure: ``refusals`` map expected errors to a
        status; anything else is a 500 (logged; the edit committed nothing)."""
        async with self.lock:
            try:
                result = await asyncio.to_thread(work)
            except (WriterBusy, ConcurrentEdit) as error:  # nothing committed: a retry may land
                return EditFailure(503, "memory", str(error))
            except Exception as error:
                status = next((code for kind, code in refusals if isinstance(error, kind)), 500)
                if status == 500:
                    log.exception("edit failed; nothing committed")
                    return EditFailure(500, field, f"edit failed, nothing committed: {error}")
                return EditFailure(status, field, str(error))
            manifest = result[0] if isinstance(result, tuple) else result
            served = await self._confirm(manifest.version)
        self._compact_later()
        return result, served

    async def add(self, items: list, vectors: np.ndarray, encoder: str) -> dict | EditFailure:
        done = await self._run(lambda: add_items(self.memory, items, vectors, encoder), "items",
                               ((DuplicateIds, 409), (ForgottenIds, 409)))
        if isinstance(done, EditFailure):
            return done
        manifest, served = done
        return {"version": manifest.version, "added": len(items), "size": manifest.count,
                "replicas": served}

    async def forget(self, body) -> dict | EditFailure:
        done = await self._run(lambda: forget_items(self.memory, body), "ids", ((ValueError, 404),))
        if isinstance(done, EditFailure):
            return done
        (manifest, report), served = done
        return {"version": manifest.version, "removed": report["removed"], "size": manifest.count,
                "not_found": report["not_found"], "seconds": report["seconds"],
                "stopped_returning": report["stopped_returning"],
                "bytes_removed": report["bytes_removed"], "replicas": served}

    async def rollback(self, to: str | None) -> dict | EditFailure:
        """Serve ``to`` again (default: LATEST's parent) as a new version (indexer/history.py
        ``rollback``: its files verified first), then wait for the replicas like an edit."""
        from indexer.checksums import ChecksumMismatch
        from indexer.history import rollback
        from indexer.manifest import IndexManifest

        done = await self._run(lambda: IndexManifest.read(self.memory, rollback(self.memory, to)),
                               "to", ((FileNotFoundError, 404), (ChecksumMismatch, 409),
                                           (ValueError, 409)))
        if isinstance(done, EditFailure):
            return done
        manifest, served = done
        return {"version": manifest.version, "rolled_back_to": manifest.details["rolled_back_to"],
                "size": manifest.count, "forgotten_tombstoned": manifest.details["forgotten_tombstoned"],
                "replicas": served}

    async def reload(self) -> dict | EditFailure:
        """Wait (bounded) until every replica serves LATEST; never takes the edit lock."""
        latest = await asyncio.to_thread(read_latest, self.memory)
        if latest is None:
            return EditFailure(404, "version", "the memory has no published version")
        return {"version": latest, "replicas": await self._confirm(latest)}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=16)
class Writer(WriterService):
    """WriterService as the one writer deployment of the application."""
