"""The direct data plane: each Router replica also serves the HTTP API itself, on a port of
its node, with no proxy and no actor hop in the request path.

Ray Serve's HTTP proxy costs ~18 ms p50 and ~17 CPU-ms per request on a 2-core machine (the
"Serve floor" in docs/benchmarks.md) against ~3 ms for the same FastAPI app under plain
uvicorn. So a Router replica runs a uvicorn server on its own event loop (the loop Serve runs
the replica's code on: the same ``api`` app, the same replica object, searchers and version
follower, no thread hop) bound to ``data_plane_host:data_plane_port``. Every Router replica on a
node binds that address with ``SO_REUSEPORT``: the kernel spreads connections over them, so
adding replicas adds throughput on the same port. Serve keeps what it is for: placing,
scaling, health-checking and restarting replicas, and cross-machine fan-out to searcher
deployments; its proxy still answers on ``http_options.port`` (the same API).

Ray Serve's own answer to the same cost is "direct ingress" behind HAProxy (experimental, LLM
applications only, in the Ray docs' *Direct streaming* guide); this module is the same idea for
any ASGI app, with uvicorn (https://www.uvicorn.org/) and Linux's SO_REUSEPORT.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import socket
import tempfile
from pathlib import Path

import uvicorn
from filelock import FileLock

log = logging.getLogger("ray.serve")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn inside a process that owns its signals (a Ray worker): install no handlers."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def reuse_port_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening, non-blocking TCP socket on (host, port) shared with every other socket of
    this user bound there with SO_REUSEPORT (Linux balances connections across them).
    ``port`` 0 picks a free port. Raises OSError (e.g. EADDRINUSE when a process that did not
    set SO_REUSEPORT holds the port) and ValueError on a platform without SO_REUSEPORT."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("the data plane needs SO_REUSEPORT (Linux, macOS, BSD)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class PortTaken(RuntimeError):
    """The data plane's address already serves another application: SO_REUSEPORT would mix
    their answers, so the replica refuses to start (give each application its own port)."""


def _claims_dir() -> Path:
    return Path(os.environ.get("VMEM_RUN_DIR") or tempfile.gettempdir())


def listening(host: str, port: int) -> bool:
    """Whether some socket listens on (host, port): a plain bind (SO_REUSEADDR only, which
    passes TIME_WAIT but not a listener) fails with EADDRINUSE."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def identity_of(application: str, memory: str) -> str:
    """What a data-plane claim names: the Serve application and the memory it serves."""
    return f"{application}@{memory}"


def claim_port(host: str, port: int, identity: str) -> None:
    """Record that (host, port) serves ``identity`` (``identity_of``) on this node, in
    ``$VMEM_RUN_DIR`` (default the temp dir), as ``vmem-data-plane-<port>.json`` beside its
    lock file (``release_claims`` removes both). Raises PortTaken when another identity
    claimed it and something still listens there; a stale claim (nothing listening) is
    replaced. Replicas of one application share the address: the same identity passes."""
    folder = _claims_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"vmem-data-plane-{port}.json"
    with FileLock(str(path) + ".lock", timeout=30):
        if path.exists():
            holder = json.loads(path.read_text()).get("identity", "")
            if holder != identity and listening(host, port):
                raise PortTaken(f"data plane port {port} already serves {holder!r}; this "
                                f"replica serves {identity!r}: give it another data_plane_port")
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"identity": identity, "host": host, "port": port}))
        temporary.replace(path)


def release_claims(application: str) -> list[int]:
    """Remove this node's claims of ``application`` (any memory) and their lock files once
    nothing listens on their address: what a stopped ``vmem serve`` or demo leaves in
    ``$VMEM_RUN_DIR``. A claim of another application, or one whose address still has a
    listener, stays. The lock file goes while held: a process waiting on it finds the name
    unlinked and opens it again (filelock checks ``st_nlink`` after locking). Returns the ports
    released."""
    released = []
    for path in sorted(_claims_dir().glob("vmem-data-plane-*.json")):
        lock = FileLock(str(path) + ".lock", timeout=30)
        with lock:
            if not path.exists():  # released meanwhile
                continue
            claim = json.loads(path.read_text())
            if (not claim.get("identity", "").startswith(f"{application}@")
                    or listening(claim["host"], claim["port"])):
                continue
            path.unlink()
            Path(lock.lock_file).unlink()
        released.append(claim["port"])
    return released


class DataPlane:
    """One replica's HTTP server for ``app`` on a shared (host, port).

    ``start`` binds at once (so a replica that cannot serve fails in its constructor, where
    Serve reports it) and serves on the running event loop; ``stop`` lets in-flight requests
    finish."""

    def __init__(self, app, sock: socket.socket, server: uvicorn.Server, task: asyncio.Task) -> None:
        self.app, self.sock, self.server, self.task = app, sock, server, task

    @classmethod
    def start(cls, app, host: str, port: int, identity: str, keep_alive_s: float = 30.0) -> DataPlane:
        """Serve ``app`` on (host, port) for ``identity`` (see ``claim_port``). Raises
        RuntimeError outside a running event loop, PortTaken, OSError."""
        loop = asyncio.get_running_loop()
        claim_port(host, port, identity)
        sock = reuse_port_socket(host, port)
        config = uvicorn.Config(app, http="httptools", lifespan="off", access_log=False,
                                log_config=None, log_level="warning",
                                timeout_keep_alive=int(keep_alive_s))
        server = _EmbeddedServer(config)
        task = loop.create_task(server.serve(sockets=[sock]), name="vmem-data-plane")
        task.add_done_callback(_report_exit)
        log.info("data plane serving on http://%s", _address(sock))
        return cls(app, sock, server, task)

    @property
    def address(self) -> str:
        """``host:port`` as bound (the port is the chosen one when 0 was asked)."""
        return _address(self.sock)

    def stop(self) -> None:
        """Stop accepting; uvicorn finishes in-flight requests, then closes the socket."""
        self.server.should_exit = True


def _address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _report_exit(task: asyncio.Task) -> None:
    """Log how the server task ended (an error would otherwise vanish with the task)."""
    if task.cancelled():
        log.info("data plane stopped (cancelled)")
    elif task.exception() is not None:
        log.error("data plane failed", exc_info=task.exception())
    else:
        log.info("data plane stopped")
