"""Per-item time limits, so one input that never ends (a named pipe, a stalled mount, a
pathological decode) is rejected with TimeoutError instead of hanging the job.

Python cannot interrupt a blocked read, so the work runs on a daemon thread and is abandoned
when the limit passes; the thread never keeps the process alive.
"""
from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
DEFAULT_ITEM_TIMEOUT_S = 60.0
_DONE = object()


def call_with_timeout(fn: Callable[[], T], timeout_s: float, what: str = "call") -> T:
    """``fn()``'s result, or its exception re-raised; TimeoutError naming ``what`` when it has
    not returned after ``timeout_s`` seconds (``timeout_s <= 0``: no limit, runs inline)."""
    if not timeout_s or timeout_s <= 0:
        return fn()
    box: dict = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as error:  # noqa: BLE001  (re-raised on the caller's thread)
            box["error"] = error
        finally:
            done.set()

    threading.Thread(target=target, daemon=True, name="vmem-item").start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"{what} did not finish within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def iterate_with_timeout(items: Iterator[T], timeout_s: float, what: str = "read") -> Iterator[T]:
    """The items of ``items``, produced on a daemon thread; TimeoutError naming ``what`` when
    the next item takes more than ``timeout_s`` seconds (``<= 0``: no limit). Exceptions of the
    iterator are re-raised here."""
    if not timeout_s or timeout_s <= 0:
        yield from items
        return
    channel: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        channel.put((True, item), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            channel.put((True, _DONE))
        except BaseException as error:  # noqa: BLE001
            channel.put((False, error))

    threading.Thread(target=produce, daemon=True, name="vmem-read").start()
    try:
        while True:
            try:
                ok, item = channel.get(timeout=timeout_s)
            except queue.Empty:
                raise TimeoutError(f"{what}: no item within {timeout_s:g} s") from None
            if not ok:
                raise item
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
