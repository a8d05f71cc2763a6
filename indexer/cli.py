"""``vmem index <command>``: build, edit and inspect the versions of a visual memory.

Runnable as a Ray job: ``ray job submit --working-dir . -- python -m indexer build --memory
gs://bucket/memory --shards 16 --ray-address auto``. Without --ray-address a local Ray instance
is started; --no-ray runs every task in this process (the single-process reference).
"""
from __future__ import annotations

import argparse
import json
import sys

from indexer.openmp import prefer_passive_wait

prefer_passive_wait()  # index jobs: before faiss loads libgomp (indexer/openmp.py)

from indexer.reliability import HARD_K, HARD_THRESHOLD, SOFT_C, SOFT_D, SOFT_K
from vmem.helptext import HelpFormatter, positive
from vmem.logs import configure_logging


def _executor(args, deferred: bool = False):
    """The command's executor (Ray, or this process with --no-ray); ``deferred``: made on its
    first use (indexer.executor.DeferredExecutor): for an edit that may need no task, and for
    a build on a local instance of its own (started at the add, after training)."""
    from indexer.executor import DeferredExecutor, make_executor

    def make():
        return make_executor(args.ray_address, use_ray=not args.no_ray, num_cpus=args.num_cpus)

    return DeferredExecutor(make, "ray") if deferred else make()


def _print_manifest(manifest) -> None:
    print(f"index version={manifest.version} operation={manifest.operation} "
          f"count={manifest.count} shards={manifest.num_shards} factory={manifest.factory} "
          f"nprobe={manifest.search_defaults.get('nprobe', 0)} parent={manifest.parent}")


def cmd_build(args) -> int:
    from indexer.build import BuildConfig, run_build
    from indexer.tasks import TASK_MEMORY_MB

    config = BuildConfig(memory=args.memory, batches=args.batch or [], num_shards=args.shards,
                         factory=args.factory, bytes_per_vector=args.bytes_per_vector,
                         keep_vectors=args.keep_vectors, recall_target=args.recall_target,
                         seed=args.seed, task_memory_mb=args.task_memory_mb or TASK_MEMORY_MB,
                         add_threads=args.add_threads)
    from indexer.executor import starts_local_instance

    own_instance = starts_local_instance(args.ray_address, not args.no_ray)
    manifest = run_build(config, _executor(args, deferred=own_instance))
    _print_manifest(manifest)
    defaults = manifest.search_defaults
    print("  " + ", ".join(f"{name} {p['seconds']:.1f}s ({p['cpu_seconds']:.1f} CPU-s)"
                           for name, p in manifest.details["phases"].items()))
    print(f"  at nprobe {defaults['nprobe']} (k_factor {defaults['k_factor']}): "
          + ", ".join(f"{name.replace('_at_', '@')} {value}" for name, value in defaults.items()
                      if name.startswith("recall_at_"))
          + ("" if manifest.details["tuning_reached_target"] else " (target not reached)"))
    return 0


def cmd_add(args) -> int:
    from indexer.edit import run_add

    _require_index(args)
    _print_manifest(run_add(args.memory, args.batch, _executor(args)))
    return 0


def cmd_delete(args) -> int:
    from indexer.edit import ForgetRequest, run_delete

    request = ForgetRequest(ids=[int(i) for i in args.id or []], keys=args.key or [],
                            labels=args.label or [])
    if not (request.ids or request.keys or request.labels):
        raise SystemExit("vmem index delete: name what to forget with --id, --key or --label")
    _require_index(args)
    # Tombstoning runs in this process. A local Ray instance starts only for a compaction
    # (--purge: up front, outside the memory's writer lock; the policy's: when due, and if it
    # cannot start, the committed delete stands and says so). A cluster is joined up front,
    # so that a wrong --ray-address fails before anything is committed.
    executor = _executor(args, deferred=not args.purge and not args.ray_address)
    manifest, report = run_delete(args.memory, request, executor, purge=args.purge)
    _print_manifest(manifest)
    removed = report["bytes_removed"]
    print(f"  forgot {report['removed']} items in {report['seconds']}s: no longer returned from "
          f"version {report['stopped_returning']['version']}; "
          + (f"bytes removed from every file of version {removed['version']} (verified)"
             if removed else "bytes remain until compaction (vmem index compact, or --purge)")
          + f"; not found: {report['not_found']}")
    if args.wait_served:
        from indexer.leases import wait_until_served

        served = wait_until_served(args.memory, manifest.version, args.wait_served)
        print(f"  serving replicas on this version: {served['served']}/{served['replicas']}"
              + (f" (lagging: {served['lagging']})" if served["lagging"] else ""))
    return 0


def cmd_forget_status(args) -> int:
    from indexer.edit import forget_status

    print(json.dumps(forget_status(args.memory, args.version), indent=2))
    return 0


def _require_index(args) -> None:
    """Refuse a memory with no index before an edit starts Ray (the edit itself refuses it
    before taking the writer lock: indexer.leases.edit_lock)."""
    from indexer.store import resolve_version

    resolve_version(args.memory)


def cmd_compact(args) -> int:
    from indexer.edit import run_compact

    _require_index(args)
    manifest = run_compact(args.memory, _executor(args))
    _print_manifest(manifest)
    if manifest.operation == "compact":
        print("  " + json.dumps({k: manifest.details[k] for k in ("shards", "purged", "seconds")}))
    return 0


def cmd_prune(args) -> int:
    from indexer.prune import run_hard_prune, run_soft_prune
    from indexer.store import resolve_version

    _require_index(args)
    if args.mode == "hard":
        manifest, report = run_hard_prune(args.memory, _executor(args), args.k or HARD_K, args.threshold)
        # a prune past the compaction policy returns the compaction that followed it; the
        # prune's own summary is in its version (the forget report's)
        pruned = (manifest if manifest.version == report["version"]
                  else resolve_version(args.memory, report["version"]))
    else:
        manifest = pruned = run_soft_prune(args.memory, _executor(args), args.k or SOFT_K, args.c, args.d)
    _print_manifest(manifest)
    print("  " + json.dumps(pruned.details["prune"]))
    return 0


def cmd_log(args) -> int:
    from indexer.history import history

    for row in reversed(history(args.memory)):
        mark = "*" if row["latest"] else " "
        search = " ".join(f"{k}={v}" for k, v in row["search"].items())
        print(f"{mark} {row['version']}  {row['operation']:<10} count={row['count']:<10} "
              f"shards={row['shards']} {search} parent={row['parent']}")
    return 0


def cmd_rollback(args) -> int:
    from indexer.history import rollback

    from indexer.manifest import IndexManifest

    version = rollback(args.memory, args.to)
    restored = IndexManifest.read(args.memory, version).details["rolled_back_to"]
    print(f"LATEST -> {version} (the files of version {restored})")
    return 0


def cmd_verify(args) -> int:
    from indexer.store import resolve_version, verify_version

    manifest = resolve_version(args.memory, args.version)
    print(f"version {manifest.version}: {verify_version(args.memory, manifest)} files verified")
    return 0


def cmd_gc(args) -> int:
    from indexer.gc import run_gc, summary

    report = run_gc(args.memory, args.keep, grace_seconds=args.grace_seconds, dry_run=args.dry_run,
                    fallbacks=not args.no_fallbacks)
    print(summary(report), file=sys.stderr)
    print(json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vmem index", description=__doc__,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help_text: str, ray: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        p.add_argument("--memory", "-m", required=True, help="ROOT of the visual memory (any fsspec URL).")
        p.add_argument("--log-level", default="INFO", help="Python logging level.")
        if ray:
            p.add_argument("--ray-address", default=None,
                           help="Ray cluster: 'auto', 'ray://host:10001'; default: a local instance.")
            p.add_argument("--num-cpus", type=positive, default=None,
                           help="CPUs of a local Ray instance (default: all; a build starts it at the add).")
            p.add_argument("--no-ray", action="store_true", help="Run every task in this process.")
        p.set_defaults(handler=handler)
        return p

    build = command("build", cmd_build, "Train, add in parallel, merge into shards, publish.")
    build.add_argument("--batch", action="append", help="Embedding batch to include (repeatable; default all).")
    build.add_argument("--shards", type=int, default=1, help="Serving shards S (items go to id mod S; default 1).")
    build.add_argument("--factory", default="auto",
                       help="'auto' (exact below 100k vectors, else IVF-PQ sized to the count and "
                            "--bytes-per-vector) or a FAISS factory string, e.g. 'OPQ64,IVF4096,PQ64x8'.")
    build.add_argument("--bytes-per-vector", type=int, default=64, help="PQ code bytes per vector for the automatic factory (default 64).")
    build.add_argument("--keep-vectors", choices=("none", "fp16", "fp32"), default="none",
                       help="Store vectors beside the PQ codes for exact re-ranking.")
    build.add_argument("--recall-target", type=float, default=0.95,
                       help="Recall the recorded nprobe must reach at k = 10 and at the serving k (100), "
                            "measured on 256 held-out queries of the memory (default %(default)s).")
    build.add_argument("--seed", type=int, default=0, help="Seed for sampling and k-means.")
    build.add_argument("--task-memory-mb", type=int, default=None,
                       help="Working memory per task (default 256): parts are read this many MB at "
                            "a time, so a part larger than a worker's memory still builds.")
    build.add_argument("--add-threads", type=int, default=0,
                       help="FAISS threads (and Ray CPUs) of one add task (default 0: every CPU of "
                            "a node with an HNSW coarse quantizer, one task per node; 1 with a flat "
                            "one, one task per CPU: the cheaper of the two for each, measured).")

    add = command("add", cmd_add, "Add embedding batches to LATEST with its trained quantizer.")
    add.add_argument("--batch", action="append", required=True, help="Batch to add (repeatable).")

    delete = command("delete", cmd_delete, "Forget items (unlearning): tombstoned at once (no query "
                     "returns them from the new version on), bytes purged by compaction (--purge: now).")
    delete.add_argument("--purge", action="store_true",
                        help="Compact the shards at once, so the items' bytes leave every file of "
                             "the live version (verified by reading the files back).")
    delete.add_argument("--wait-served", type=float, default=0.0, metavar="SECONDS",
                        help="Then wait up to SECONDS until every serving replica (live lease) "
                             "serves the new version.")
    delete.add_argument("--id", action="append", type=int, help="Item id (an integer; repeatable).")
    delete.add_argument("--key", action="append", help="Source key (repeatable).")
    delete.add_argument("--label", action="append", help="Forget a whole label (repeatable).")

    prune = command("prune", cmd_prune, "Leave-one-out reliability, then hard or soft pruning.")
    prune.add_argument("mode", choices=("hard", "soft"))
    prune.add_argument("--k", type=int, default=0,
                       help=f"Neighbours per query (default {HARD_K} hard, {SOFT_K} soft).")
    prune.add_argument("--threshold", type=int, default=HARD_THRESHOLD, help="Hard: delete v_wrong >= this.")
    prune.add_argument("--c", type=float, default=SOFT_C, help="Soft: gamma = d / (c + v_wrong).")
    prune.add_argument("--d", type=float, default=SOFT_D, help="Soft: gamma = d / (c + v_wrong).")

    command("compact", cmd_compact, "Merge every shard's segments into one and drop tombstoned "
            "items physically, as a new version (edits also compact past a threshold).")
    status = command("forget-status", cmd_forget_status, "A delete's forget report: when its items "
                     "stopped being returned and when their bytes left every file of the live "
                     "version (filled in by the compaction that purged them).", ray=False)
    status.add_argument("version", help="The version the delete published (its response names it).")
    command("log", cmd_log, "List versions, newest first; * marks LATEST.", ray=False)
    rollback = command("rollback", cmd_rollback, "Serve a verified earlier version again, published as a new version (LATEST moves to it).", ray=False)
    rollback.add_argument("--to", default=None, help="Version (default: the parent of LATEST).")
    verify = command("verify", cmd_verify, "Check every file of a version against its checksums.", ray=False)
    verify.add_argument("--version", default=None, help="Version (default: LATEST).")
    gc = command("gc", cmd_gc, "Remove old versions (file by file: shared files stay), stale temp "
                 "files, orphan folders of killed runs and online batches of failed adds; "
                 "never LATEST, a pinned version, one a live replica lease names or their "
                 "fallback versions (--no-fallbacks). Prints a "
                 "summary (stderr) and the report as JSON (stdout).", ray=False)
    gc.add_argument("--keep", type=int, required=True,
                    help="Keep the N newest complete versions (besides LATEST, pinned, leased).")
    gc.add_argument("--grace-seconds", type=float, default=3600.0,
                    help="Leftovers (temp files, orphan folders, unlisted online batches) "
                         "younger than this are kept: a run may still be writing them.")
    gc.add_argument("--dry-run", action="store_true", help="Report what would go; remove nothing.")
    gc.add_argument("--no-fallbacks", action="store_true",
                    help="Also drop the versions a replica serves a shard from when its file of "
                         "the served version fails to load (the pre-compaction segments of a "
                         "compaction that purged nothing, mostly); such a shard is then left out.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level)
    return args.handler(args)


if __name__ == "__main__":
    from indexer import program

    program.run(main)
