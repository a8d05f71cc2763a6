"""``vmem <command> ...`` dispatches to a job module, as ``python -m <module> ...`` would.

Each job is a module with ``main(argv)`` so Beam and Ray users can submit it directly
(``python -m pipelines.ingest``, ``ray job submit -- python -m indexer.build``). Modules are
imported only when their command runs: ``vmem data`` never imports Ray.
"""
from __future__ import annotations

import atexit
import importlib
import logging
import os
import sys
from typing import NoReturn

USER_ERRORS = (FileNotFoundError, ValueError, PermissionError, RuntimeError)

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("pipelines.data.__main__", "Write demo/test data sets (Fashion-MNIST) as WebDataset shards."),
    "ingest": ("pipelines.ingest", "Beam job: embed image shards into ROOT/embeddings/<batch>/."),
    "import": ("pipelines.import_embeddings", "Import embeddings you already have (clip-retrieval, autofaiss .npy/Parquet) as a batch."),
    "serve": ("serving.serve", "Ray Serve: the HTTP API (classify, neighbours, edit the memory)."),
    "classify": ("serving.batch", "Ray Data: classify a whole query set, write predictions + neighbours."),
    "eval": ("experiments.cli", "Experiments: the paper's claims measured on your memory; writes a report."),
    "update": ("vmem.update", "Scheduled step: ingest new shards, publish a version, verify, reload serving."),
    "demo": ("experiments.demo", "The whole system on Fashion-MNIST: ingest, build, serve, add, forget, report."),
    "index": ("indexer.cli", "Ray jobs: build, add, delete, prune, log, rollback, verify, gc index versions."),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vmem <command> [options]   (vmem <command> --help for each)", "",
             "Distributed visual memory: classify images by retrieval over a sharded index.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vmem: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.main(rest) or 0)
    except USER_ERRORS as error:
        # Bad input or state the user can fix: one clear line, no traceback. Anything else
        # is a bug and keeps its traceback.
        print(f"vmem {command}: error: {error}", file=sys.stderr)
        return 1


def exit_code(stop: SystemExit) -> int:
    """The status Python gives ``sys.exit(code)``: None is 0, an int itself, anything else 1."""
    return 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 1


def run(argv: list[str] | None = None) -> NoReturn:
    """The ``vmem`` program: ``main(argv)``, then exit with its status.

    Where a command ran Ray in this process, the process ends with ``os._exit`` once Python's
    own exit work is done (non-daemon threads joined, every other atexit handler run: Ray's,
    logging's, tempfile's, multiprocessing's), skipping the native libraries' teardown. Ray's
    core worker and gRPC leave native threads running after ``ray.shutdown()``
    (``gcs_client_io_service``, ``worker.io``, gRPC's timer and executor threads, seen in
    /proc/self/task at exit), and the libraries' static destructors race them: ``vmem demo``
    died of SIGSEGV after printing "done", past faulthandler's reach (twice in ~15 runs of the
    test suite's demo, once in CI). The handler is registered before any command imports Ray,
    so it runs last.
    """
    status = {"code": 1}  # an uncaught exception: Python prints it and exits with 1

    def finish() -> None:
        if "ray" in sys.modules:
            logging.shutdown()
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os._exit(status["code"])

    atexit.register(finish)
    try:
        status["code"] = main(argv)
    except SystemExit as stop:  # argparse's --help and usage errors
        status["code"] = exit_code(stop)
        raise
    except KeyboardInterrupt:
        status["code"] = 128 + 2  # as a shell reports a program ended by SIGINT
        raise
    sys.exit(status["code"])


if __name__ == "__main__":
    run()
