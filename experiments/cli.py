"""``vmem eval <experiment>``: measure one of the paper's claims on your memory and queries.

Each experiment writes OUT/<experiment>.json and OUT/<experiment>.png, then re-renders
OUT/index.html from every result in OUT (open it from disk). Memories the experiments derive
(subsets, held-out classes, relabelled copies) are built by the indexer under --work.

    vmem eval aggregation --memory ROOT --queries QROOT --out report
    vmem eval aggregation --predictions PRED --out report     # over a `vmem classify` run
    vmem eval all --memory ROOT --queries QROOT --out report
"""
from __future__ import annotations

import argparse
import time

from experiments import (aggregation, interpretability, label_noise, memory_size, new_classes, pruning,
                         reranking, unlearning)
from experiments.report import summary_lines, write_report
from experiments.results import Context, Result
from experiments.workbench import EmbeddedSet, Memories
from pipelines import storage
from vmem.helptext import HelpFormatter
from vmem.logs import configure_logging

EXPERIMENTS = {
    "aggregation": "accuracy vs k for plurality / distance / softmax / rank voting",
    "new-classes": "hold classes out, add them with no training, old vs new accuracy",
    "memory-size": "images per class (1, 10, 100, all) x encoders",
    "unlearning": "delete images; compare with a memory built without them",
    "pruning": "hard and soft pruning (v_wrong), accuracy per aggregator",
    "label-noise": "accuracy as 0..60%% of memory labels are corrupted",
    "interpretability": "attribution gallery, calibration, hit rate, neighbour reliability",
    "reranking": "the offline prototype re-ranker over the top-50",
}


def int_list(text: str) -> list[int]:
    """An argparse type: a comma list of integers, 'all' read as 0 (every image)."""
    return [0 if part.strip() == "all" else int(part) for part in text.split(",") if part.strip()]


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--memory", "-m", help="ROOT whose embedding batches are the memory.")
    common.add_argument("--queries", "-q", help="ROOT whose embedding batches are the queries.")
    common.add_argument("--memory-batch", action="append", help="Memory batch (repeatable; default all).")
    common.add_argument("--query-batch", action="append", help="Query batch (repeatable; default all).")
    common.add_argument("--out", "-o", default="report", help="Results and index.html (default: report).")
    common.add_argument("--work", default="", help="Derived memories (default: OUT/work).")
    common.add_argument("--k", type=int, default=100, help="Neighbours per query (method.md: 100).")
    common.add_argument("--seed", type=int, default=0, help="Seed of every sample and corruption.")
    common.add_argument("--shards", type=int, default=1, help="Shards of each derived memory.")
    common.add_argument("--factory", default="auto", help="FAISS factory of derived memories.")
    common.add_argument("--ray", action="store_true", help="Build on Ray (default: the same tasks in-process).")
    common.add_argument("--device", default="auto", help="Encoder device when re-embedding (memory-size).")
    common.add_argument("--log-level", default="WARNING")
    parser = argparse.ArgumentParser(prog="vmem eval", description=__doc__,
                                     formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="experiment")
    specific = {name: sub.add_parser(name, parents=[common], help=text, description=text.replace("%%", "%"),
                                  formatter_class=HelpFormatter)
                for name, text in EXPERIMENTS.items()}
    everything = sub.add_parser("all", parents=[common], help="every experiment, then the report",
                                formatter_class=HelpFormatter)
    sub.add_parser("report", help="re-render OUT/index.html from the results in OUT",
                   formatter_class=HelpFormatter).add_argument(
        "--out", "-o", default="report")
    specific["aggregation"].add_argument("--predictions", "-p", default="",
                                         help="OUT of a `vmem classify` run instead of --memory/--queries.")
    for target in (specific["new-classes"], everything):
        target.add_argument("--hold-out", type=_names, default=None, help="Classes to hold out (comma list; "
                            "default: --hold-out-count seeded classes).")
        target.add_argument("--hold-out-count", type=int, default=2)
    for target in (specific["memory-size"], everything):
        target.add_argument("--encoders", type=_names, default=None,
                            help="Comma list (default: the memory's encoder), e.g. "
                                 "efficientnet-lite0,efficientnet-lite1,efficientnet-lite2.")
        target.add_argument("--per-class", type=int_list, default=[1, 10, 100, 0],
                            help="Images per class, 'all' for every image (default 1,10,100,all).")
        target.add_argument("--encoder-weights", action="append", default=[], metavar="ENCODER=URL",
                            help="Weights for an encoder of --encoders (repeatable), e.g. "
                                 "timm:vit_small_patch14_dinov2.lvd142m=/models/dinov2-s.safetensors.")
    for target in (specific["unlearning"], everything):
        target.add_argument("--forget-fraction", type=float, default=0.05)
        target.add_argument("--single-deletions", type=int, default=5, help="Timed one-image deletions.")
    for target in (specific["pruning"], everything):
        target.add_argument("--thresholds", type=int_list, default=[32, 64, 128, 256],
                            help="Hard-pruning v_wrong thresholds (method.md: 128).")
    for target in (specific["label-noise"], everything):
        target.add_argument("--noise", type=_floats, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    for target in (specific["interpretability"], everything):
        target.add_argument("--gallery", type=int, default=8, help="Queries in the gallery (half wrong).")
    for target in (specific["reranking"], everything):
        target.add_argument("--reranker", default="prototype")
        target.add_argument("--rerank-top", type=int, default=50)
        target.add_argument("--rerank-weight", type=float, default=1.0)
    return parser


def make_context(args: argparse.Namespace) -> Context:
    if not args.memory or not args.queries:
        raise ValueError("--memory and --queries are required (ROOTs holding embedding batches)")
    if args.ray:
        from indexer.executor import RayExecutor

        executor = RayExecutor()
    else:
        from indexer.executor import LocalExecutor

        executor = LocalExecutor()
    work = args.work or storage.join(args.out, "work")
    return Context(EmbeddedSet.load(args.memory, args.memory_batch),
                   EmbeddedSet.load(args.queries, args.query_batch), args.out,
                   Memories(work, executor, args.shards, args.factory), args.k, args.seed, args.device)


def run_experiment(name: str, context: Context, args: argparse.Namespace) -> Result:
    if name == "aggregation":
        return aggregation.run(context)
    if name == "new-classes":
        return new_classes.run(context, args.hold_out, args.hold_out_count)
    if name == "memory-size":
        weights = dict(item.rsplit("=", 1) for item in args.encoder_weights)
        return memory_size.run(context, args.encoders or [context.memory.encoder], args.per_class,
                               weights=weights)
    if name == "unlearning":
        return unlearning.run(context, args.forget_fraction, args.single_deletions)
    if name == "pruning":
        return pruning.run(context, args.thresholds)
    if name == "label-noise":
        return label_noise.run(context, args.noise)
    if name == "interpretability":
        return interpretability.run(context, args.gallery)
    if name == "reranking":
        return reranking.run(context, args.reranker, args.rerank_top, args.rerank_weight)
    raise ValueError(f"unknown experiment {name!r}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(getattr(args, "log_level", "WARNING"))
    results = []
    if args.experiment == "aggregation" and args.predictions:
        results.append(aggregation.run_from_predictions(args.predictions, args.out, args.k))
        results[-1].write(args.out)
    elif args.experiment != "report":
        context = make_context(args)
        for name in EXPERIMENTS if args.experiment == "all" else [args.experiment]:
            started = time.monotonic()
            print(f"vmem eval: {name} ...", flush=True)
            result = run_experiment(name, context, args)
            result.write(args.out)
            results.append(result)
            print(f"vmem eval: {name} done in {time.monotonic() - started:.1f} s", flush=True)
    report = write_report(args.out)
    print("\n".join(summary_lines(results)))
    print(f"report: {report}")
    return 0


if __name__ == "__main__":
    from indexer import program

    program.run(main)
