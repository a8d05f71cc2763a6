"""``vmem <command> ...`` dispatches to a job module, as ``python -m <module> ...`` would.

Each job is a module with ``main(argv)`` so Beam and Ray users can submit it directly
(``python -m pipelines.ingest``, ``ray job submit -- python -m indexer build``). Modules are
imported only when their command runs: ``vmem data`` never imports Ray.
"""
from __future__ import annotations

import importlib
import sys
from typing import NoReturn

DISTRIBUTION = "visual-memory"  # pyproject.toml [project] name
USER_ERRORS = (FileNotFoundError, ValueError, PermissionError, RuntimeError, TimeoutError)

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("pipelines.data.__main__", "Write demo/test data sets (Fashion-MNIST) as WebDataset shards."),
    "ingest": ("pipelines.ingest", "Beam job: embed image shards into ROOT/embeddings/<batch>/."),
    "import": ("pipelines.import_embeddings", "Import embeddings you already have (clip-retrieval, autofaiss .npy/Parquet) as a batch."),
    "serve": ("serving.serve", "Ray Serve: the HTTP API (classify, neighbours, edit the memory)."),
    "classify": ("serving.batch", "Ray Data: classify a whole query set, write predictions + neighbours."),
    "eval": ("experiments.cli", "Experiments: the paper's claims measured on your memory; writes a report."),
    "update": ("vmem.update", "Scheduled step: ingest new shards, publish a version, verify, reload serving."),
    "demo": ("experiments.demo", "The whole system on Fashion-MNIST: ingest, build, serve, add, forget, report."),
    "index": ("indexer.cli", "Ray jobs: build, add, delete, compact, prune, forget-status, log, rollback, verify, gc."),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vmem <command> [options]   (vmem <command> --help for each; vmem --version)", "",
             "Distributed visual memory: classify images by retrieval over a sharded index.", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # no command: the usage, as an error (as argparse does for a missing argument)
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import version

        print(f"vmem {version(DISTRIBUTION)}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"vmem: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    from vmem.logs import drop_noise

    drop_noise()  # before the module's imports (Beam's) log what it drops
    module = importlib.import_module(COMMANDS[command][0])
    try:
        return int(module.main(rest) or 0)
    except USER_ERRORS as error:
        # Bad input or state the user can fix: one clear line, no traceback. Anything else
        # is a bug and keeps its traceback.
        print(f"vmem {command}: error: {error}", file=sys.stderr)
        return 1


def run(argv: list[str] | None = None) -> NoReturn:
    """The ``vmem`` program: ``main(argv)``, then exit with its status (indexer.program.run:
    after a command that ran Ray, without the native libraries' teardown)."""
    from indexer import program

    program.run(main, argv)


if __name__ == "__main__":
    run()
