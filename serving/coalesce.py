"""Coalesce concurrent calls into one batch call, with no added wait.

A searcher answers a batch of queries with one FAISS call per shard (one pass over each probed
inverted list for all of them). Serve's ``@serve.batch`` gathers a batch by waiting up to
``batch_wait_timeout_s`` and needs a Serve replica; this one never waits: a call joins the
batch that the event loop runs next, so a lone query runs at once and queries that arrive while
a batch is being searched (the loop is busy, they queue up) are searched together next.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """``await coalescer(item)`` -> ``function([... item ...])``'s result for ``item``.

    ``function`` takes a list of at most ``max_batch`` items and returns one result per item,
    in order; an exception it raises is raised by every call of its batch. Calls are answered
    in arrival order. Not thread-safe: use it from one event loop."""

    def __init__(self, function: Callable[[list[Item]], Awaitable[list[Result]]],
                 max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.function, self.max_batch = function, max_batch
        self._pending: list[tuple[Item, asyncio.Future]] = []
        self._draining: asyncio.Task | None = None
        self.batches = 0  # batch calls made (for tests and metrics)

    async def __call__(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((item, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch = self._pending[:self.max_batch]
                del self._pending[:self.max_batch]
                live = [(item, future) for item, future in batch if not future.done()]
                if not live:  # every caller gave up (timeout, cancelled)
                    continue
                self.batches += 1
                try:
                    results = await self.function([item for item, _ in live])
                except Exception as error:  # noqa: BLE001 - handed to every caller of the batch
                    for _, future in live:
                        if not future.done():
                            future.set_exception(error)
                    continue
                if len(results) != len(live):
                    error = RuntimeError(f"batch function returned {len(results)} results "
                                         f"for {len(live)} items")
                    for _, future in live:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(live, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._draining = None
