"""Crash points for fault tests: a process dies at a named point, once, when asked.

``VMEM_CRASH_AT=<point>:<marker file>`` makes the first process that reaches ``point`` while
the marker file exists remove it and exit at once (``os._exit``: no cleanup, no exception
handler, as with ``kill -9`` or a lost node). Build points: ``add_part`` (a task, after its
first chunk is encoded and its piece files are open) and ``publish`` (the driver, after every
file is written, before the manifest). Unset, ``crash_point`` costs one environment lookup.
"""
from __future__ import annotations

import os

ENV = "VMEM_CRASH_AT"
EXIT_CODE = 75


def crash_point(point: str) -> None:
    """Exit this process if ``VMEM_CRASH_AT`` names ``point`` and its marker file exists."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    wanted, _, marker = spec.partition(":")
    if wanted != point or not marker:
        return
    try:
        os.remove(marker)  # only one process wins the marker: the crash happens once
    except FileNotFoundError:
        return
    os._exit(EXIT_CODE)
