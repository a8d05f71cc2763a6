"""A new local Ray instance with every process on loopback.

``ray.init(_node_ip_address="127.0.0.1")`` alone does not keep an instance on loopback: Ray
turns a loopback address into the machine's reachable one
(``ray._private.services.resolve_ip_for_localhost``), and its GCS, raylet, workers and agents
then listen on every interface (seen with Ray 2.60: ``gcs_server --node-ip-address=<the
machine's address>``, its ports on ``*``). With clusters turned off
(``ray_constants.ENABLE_RAY_CLUSTER``, which Ray reads from
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` for machines where it supports no cluster) while the
instance starts, the node's address stays 127.0.0.1 and every process listens there: what a
single-machine instance is. Ray is pinned (pyproject.toml); tests/test_localray.py checks
every listening socket of such an instance, so an upgrade that changes this fails there.
``init`` joins a cluster (an address, a Ray job's, one ``ray start`` left) as ``ray.init``
does, and only a new local instance goes through ``init_local``.
"""
from __future__ import annotations

import threading
from typing import Any

_SWITCH = threading.Lock()


def init_local(**options: Any) -> None:
    """``ray.init(address="local", _node_ip_address="127.0.0.1", **options)`` with Ray's
    cluster switch off while it starts the instance, so that the node's address stays
    127.0.0.1 and nothing it starts listens beyond loopback. The switch (a module constant
    Ray reads from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` at import) is restored afterwards and
    the environment is left alone: a ``ray start`` this process runs later (a loopback
    cluster's second node) would refuse to join with it off. Raises what ``ray.init``
    raises."""
    import ray
    from ray._private import ray_constants

    with _SWITCH:  # two threads starting Ray at once must not restore each other's value
        switch = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            ray.init(address="local", _node_ip_address="127.0.0.1", **options)
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = switch


def init(address: str | None = None, **options: Any) -> None:
    """Join ``address``, or the instance ``ray.init()`` would find (a Ray job's, one ``ray
    start`` left on this machine: ``executor.starts_local_instance``), or else start a local
    one on loopback (``init_local``). ``options`` (e.g. ``num_cpus``) only shape a new local
    instance; joining passes ``include_dashboard`` and ``log_to_driver`` alone."""
    import ray

    from indexer.executor import starts_local_instance

    if address is None and starts_local_instance(None):
        init_local(**options)
        return
    ray.init(address=address, **{key: value for key, value in options.items()
                                 if key in ("include_dashboard", "log_to_driver")})
