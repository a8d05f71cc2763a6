"""Run the indexer's tasks on Ray, or in this process: the same task functions either way, so
a distributed build can be checked against a single-process one."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)


class LocalExecutor:
    """Runs each task at submit time, in this process."""

    name = "local"

    def put(self, value: Any) -> Any:
        return value

    def submit(self, fn: Callable, *args: Any, num_returns: int = 1, **options: Any) -> Any:
        result = fn(*args)
        return list(result) if num_returns > 1 else result

    def get(self, handles: Sequence[Any], what: str = "tasks") -> list:
        return list(handles)


class RayExecutor:
    """Ray tasks with retries (a lost worker re-runs its task), progress logged as they finish.

    ``address``: None starts (or joins, inside a Ray job) a local instance; "auto" joins the
    cluster this machine belongs to; "ray://host:10001" connects a client.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = 3) -> None:
        import ray

        self.ray = ray
        self.max_retries = max_retries
        self._remote: dict[Callable, Any] = {}
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False,
                                      "log_to_driver": True}
            if address is None:
                kwargs.update(num_cpus=num_cpus, _node_ip_address="127.0.0.1")
            ray.init(**{k: v for k, v in kwargs.items() if v is not None or k == "address"})

    def put(self, value: Any) -> Any:
        return self.ray.put(value)

    def submit(self, fn: Callable, *args: Any, num_returns: int = 1, **options: Any) -> Any:
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self.ray.remote(fn)
        return remote.options(num_returns=num_returns, max_retries=self.max_retries,
                              retry_exceptions=[OSError], **options).remote(*args)

    def get(self, handles: Sequence[Any], what: str = "tasks") -> list:
        pending, total, started, last = list(handles), len(handles), time.monotonic(), 0.0
        while pending:
            _, pending = self.ray.wait(pending, num_returns=len(pending), timeout=5.0)
            now = time.monotonic()
            if pending and now - last > 5.0:
                last = now
                log.info("%s: %d/%d done (%.0fs)", what, total - len(pending), total, now - started)
        return self.ray.get(list(handles))


def make_executor(ray_address: str | None, use_ray: bool = True, num_cpus: int | None = None):
    return RayExecutor(ray_address, num_cpus) if use_ray else LocalExecutor()
