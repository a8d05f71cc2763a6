"""Which version a router replica serves: every replica follows ``LATEST``, within bounds.

Each router replica polls ``ROOT/index/LATEST`` (a tiny file, then the commit record after its
generation: indexer/layout.py ``read_head``) every ``version_poll_s`` and
switches its searcher groups to a newer version as soon as it appears (a switch loads only the
segments and tombstones that changed: indexer/search.py ``SegmentCache``). It renews a lease
(indexer/leases.py) naming the version it serves, which is how the writer knows when every
replica has a new version. Guarantees (Milvus's vocabulary):

- **bounded staleness**: a replica answers from a version at most ``max_staleness_s`` older
  than LATEST; if its last successful check is older than that, it re-reads LATEST before
  answering (a replica paused past its lease catches up before its next answer);
- **session** (read-your-writes): an edit's response carries its version; a query with
  ``min_version`` is answered from that version or newer, after waiting up to
  ``min_version_wait_s``, else 503 with Retry-After;
- **strong for deletes**: the writer returns from a delete only when every live lease serves
  the new version (or lapsed, which forces the check above).

A version that fails to load (corrupt file, checksum mismatch) is refused: the replica keeps
the version it serves, reports it in ``status()`` (``/healthz``) and metrics, and retries it
after ``retry_failed_s``. A replica that starts on a LATEST it cannot load falls back to the
newest loadable ancestor reachable without a step that deleted or purged an item (an add, a
soft prune, a compaction that purged nothing: indexer/history.py ``fallback_versions``), never
past a delete, which would bring forgotten items back. A replica that starts on a LATEST
that would leave a shard out starts instead on the newest version that stands in for it
whole (``whole_stand_ins``), when one loads with every shard: what its running siblings
serve after refusing it (serving/router.py ``_start``).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from dataclasses import dataclass

from indexer.history import fallback_versions, stand_in_versions
from indexer.layout import read_latest
from indexer.leases import drop_lease, renew_lease
from indexer.manifest import IndexManifest

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class FollowOptions:
    version_poll_s: float = 0.02  # how often a replica reads LATEST
    max_staleness_s: float = 2.0  # answer only after a LATEST check this recent
    lease_ttl_s: float = 10.0  # > max_staleness_s: a lapsed lease means the replica re-checks
    min_version_wait_s: float = 2.0  # a query's min_version: wait this long, then 503
    reload_timeout_s: float = 60.0  # one switch (loading a version) at most
    retry_failed_s: float = 10.0  # a version that failed to load is tried again after this
    fallback_depth: int = 10  # ancestors tried when LATEST cannot be loaded at start


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def reason(error: BaseException) -> str:
    """Why a version was refused, one readable string: the original exception of a Ray task
    error (its ``cause``; not the remote traceback), without terminal colour codes."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        error = cause
    return ANSI_ESCAPE.sub("", f"{type(error).__name__}: {error}").strip()


def whole_stand_ins(memory: str, version: str, depth: int = 10) -> list[str]:
    """The versions that may be served whole in place of ``version`` (indexer.history
    ``stand_in_versions``), newest first; those found before a manifest that cannot be read
    (gc) are kept."""
    found: list[str] = []
    try:
        for manifest in stand_in_versions(memory, IndexManifest.read(memory, version), depth):
            found.append(manifest.version)
    except (OSError, ValueError) as unreadable:
        log.warning("versions standing in for %s listed up to an unreadable manifest: %s",
                    version, unreadable)
    return found


class VersionUnavailable(Exception):
    """The requested version is not served here yet (the router answers 503 + Retry-After)."""


class VersionFollower:
    """Follows LATEST for one replica. ``switch(version)`` is the replica's loader (an async
    callable that makes every searcher group serve ``version`` or raises)."""

    def __init__(self, memory: str, version: str, switch, options: FollowOptions,
                 holder: str | None = None) -> None:
        self.memory, self.version, self._switch, self.options = memory, version, switch, options
        self.holder = holder or f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.confirmed_at = time.monotonic()
        self.lease_renewed = 0.0
        self.refused: dict[str, tuple[float, str]] = {}  # version -> (when, why)
        self.lock = asyncio.Lock()
        self.task: asyncio.Task | None = None
        self.switches = 0

    # ---- the loop ------------------------------------------------------------------------
    def start(self) -> None:
        """Start polling (idempotent; needs a running event loop)."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._poll_forever())

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as error:  # noqa: BLE001 - a poll failure must not stop following
                log.warning("version poll failed: %s", error)
            await asyncio.sleep(self.options.version_poll_s)

    async def refresh(self) -> str:
        """Read LATEST and switch to it when newer (and not recently refused). Returns the
        version served afterwards."""
        latest = await asyncio.to_thread(read_latest, self.memory)
        now = time.monotonic()
        if latest and latest > self.version and not self._recently_refused(latest, now):
            async with self.lock:
                if latest > self.version:
                    await self._try_switch(latest)
        self.confirmed_at = now
        if self.version and (now - self.lease_renewed > self.options.lease_ttl_s / 3):
            await asyncio.to_thread(renew_lease, self.memory, self.holder, self.version,
                                    self.options.lease_ttl_s)
            self.lease_renewed = now
        return self.version

    def refuse(self, version: str, why: str) -> None:
        """Record ``version`` as refused (``status()``; tried again after ``retry_failed_s``)."""
        self.refused[version] = (time.monotonic(), why)

    def _recently_refused(self, version: str, now: float) -> bool:
        refused = self.refused.get(version)
        return refused is not None and now - refused[0] < self.options.retry_failed_s

    async def _try_switch(self, version: str) -> None:
        try:
            await asyncio.wait_for(self._switch(version), self.options.reload_timeout_s)
        except Exception as error:  # noqa: BLE001 - refused: keep serving what we have
            why = reason(error)
            self.refused[version] = (time.monotonic(), why)
            log.error("version %s refused, still serving %s: %s", version, self.version, why)
            return
        # the lease first: once ``self.version`` says so, ``ensure`` answers from this version,
        # and the writer's ``wait_until_served`` must already see it
        await asyncio.to_thread(renew_lease, self.memory, self.holder, version, self.options.lease_ttl_s)
        self.lease_renewed = time.monotonic()
        self.version = version
        self.switches += 1
        self.refused.pop(version, None)

    async def start_on_loadable(self, latest: str, switch=None) -> str:
        """At start: serve ``latest`` or, if it cannot be loaded, its newest ancestor reachable
        while no step deleted or purged an item (indexer.history ``fallback_versions``: no
        item deleted since comes back), each refusal recorded. ``switch``: the loader to use (default the
        follower's; the router passes one that serves a failing shard from an ancestor or
        leaves it out). Raises RuntimeError (from the last error) when none loads."""
        switch = switch or self._switch
        candidates = [latest]
        error: Exception | None = None
        while candidates:
            candidate = candidates.pop(0)
            try:
                await asyncio.wait_for(switch(candidate), self.options.reload_timeout_s)
                await asyncio.to_thread(renew_lease, self.memory, self.holder, candidate,
                                        self.options.lease_ttl_s)
                self.version = candidate
                self.lease_renewed = self.confirmed_at = time.monotonic()
                return candidate
            except Exception as failure:  # noqa: BLE001 - try a fallback version
                error = failure
                self.refused[candidate] = (time.monotonic(), reason(failure))
                log.error("cannot serve version %s (%s)", candidate, failure)
                if candidate == latest:
                    try:
                        candidates = await asyncio.to_thread(self._fallback_versions, latest)
                    except (OSError, ValueError) as unreadable:  # a manifest gone (gc) or bad
                        log.error("no ancestor of %s to fall back to: %s", latest, unreadable)
        raise RuntimeError(f"no loadable version from {latest} without a deletion since") from error

    def _fallback_versions(self, version: str) -> list[str]:
        manifest = IndexManifest.read(self.memory, version)
        return [m.version for m in fallback_versions(self.memory, manifest, depth=self.options.fallback_depth)]

    # ---- per request ---------------------------------------------------------------------
    async def ensure(self, min_version: str | None = None) -> str:
        """The version to answer from: re-check LATEST when the last check is older than
        ``max_staleness_s``; wait for ``min_version`` up to ``min_version_wait_s``. Raises
        VersionUnavailable when it does not arrive in time."""
        if time.monotonic() - self.confirmed_at > self.options.max_staleness_s:
            await self.refresh()
        if min_version and min_version > self.version:
            deadline = time.monotonic() + self.options.min_version_wait_s
            while min_version > self.version and time.monotonic() < deadline:
                await self.refresh()
                if min_version > self.version:
                    await asyncio.sleep(min(self.options.version_poll_s, 0.05))
            if min_version > self.version:
                refused = self.refused.get(min_version)
                raise VersionUnavailable(f"version {min_version} is not served yet (this replica "
                                         f"serves {self.version}" + (f"; it refused {min_version}: "
                                         f"{refused[1]})" if refused else ")"))
        return self.version

    def status(self) -> dict:
        latest_refused = {v: why for v, (_, why) in self.refused.items() if v > self.version}
        return {"status": "degraded" if latest_refused else "ok", "version": self.version,
                "refused_versions": latest_refused,
                "seconds_since_check": round(time.monotonic() - self.confirmed_at, 3),
                "switches": self.switches}

    def stop(self) -> None:
        """Stop polling and drop the lease (a stopped replica must not hold edits back)."""
        if self.task is not None and not self.task.done():
            try:
                self.task.cancel()
            except RuntimeError as error:  # the loop is already closed: nothing left to cancel
                log.debug("version poll not cancelled (%s): its event loop is closed", error)
        try:
            drop_lease(self.memory, self.holder)
        except OSError as error:
            log.warning("could not drop lease %s: %s", self.holder, error)
