"""Wraps any source so that a read never hangs the job: only regular files are opened (a named
pipe, device or socket is rejected unopened), and every item must arrive within a time limit."""
from __future__ import annotations

import os
import posixpath
import stat
from typing import Iterator

import fsspec

from pipelines.records import ImageRecord, Rejected
from pipelines.sources.base import ReadTask
from pipelines.timeouts import DEFAULT_ITEM_TIMEOUT_S, iterate_with_timeout

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def not_regular_file(url: str) -> str:
    """'' when ``url`` is a regular file (or its file system has no other kinds), else what it
    is, e.g. 'a named pipe (FIFO)'. Local paths are checked with os.stat (links followed)."""
    fs, path = fsspec.core.url_to_fs(url)
    if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return ""  # let the reader report the real error
        if stat.S_ISREG(mode):
            return ""
        return next((name for test, name in _KINDS if test(mode)), "not a regular file")
    try:
        kind = fs.info(path).get("type", "file")
    except OSError:
        return ""
    return "" if kind in ("file", None) else f"a {kind}"


def task_key(task: ReadTask) -> str:
    """The key a task-level rejection is recorded under: the path below the folder root (as
    the folder source keys its images), else the URL."""
    if not task.root:
        return task.url
    root = fsspec.core.url_to_fs(task.root)[1]
    return posixpath.relpath(fsspec.core.url_to_fs(task.url)[1], root)


class GuardedSource:
    """``source`` with the read guards; ``timeout_s`` (seconds, <= 0: none) bounds the wait
    for each item of a task. A timed-out task yields one Rejected (stage read, TimeoutError)
    and the rest of that task is abandoned."""

    def __init__(self, source, timeout_s: float = DEFAULT_ITEM_TIMEOUT_S) -> None:
        self.source = source
        self.timeout_s = timeout_s
        self.name = source.name

    def plan(self, pattern: str | list[str]) -> list[ReadTask]:
        return self.source.plan(pattern)

    def read(self, task: ReadTask) -> Iterator[ImageRecord | Rejected]:
        kind = not_regular_file(task.url)
        if kind:
            yield Rejected(task_key(task), task.url, "read", "NotARegularFile",
                           f"{kind} is not a regular file: skipped without opening it")
            return
        try:
            yield from iterate_with_timeout(self.source.read(task), self.timeout_s,
                                            f"reading {task.url}")
        except TimeoutError as error:
            yield Rejected.from_exception(task_key(task), task.url, "read", error)
