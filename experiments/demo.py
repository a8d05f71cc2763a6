"""``vmem demo``: the whole system on Fashion-MNIST, on this machine, with the real engines.

1. data      Fashion-MNIST as WebDataset shards; one class (--new-class) kept out of memory
2. ingest    Beam job (offline encoder): memory and query images -> embedding batches
3. build     Ray job: a sharded FAISS index version
4. serve     Ray Serve on 127.0.0.1: classify every test image through the HTTP API
5. add       POST the unseen class's images (no training), classify again
6. forget    DELETE the images most often used as evidence, classify again: they never return
7. stop      Serve and Ray shut down
8. measure   every `vmem eval` experiment, then report/index.html and a summary table

    vmem demo                          # .demo/ and report/, about 4-9 minutes on 2 CPU cores
    vmem demo --train-per-class 50 --no-experiments
"""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass, field

from experiments import plots
from experiments.cli import int_list
from experiments.report import clear_results, summary_lines, write_report
from experiments.results import Check, Result, pct
from pipelines import storage
from pipelines.records import ImageRecord
from pipelines.sources.fetch import read_sources
from pipelines.sources.webdataset import WebDatasetSource
from vmem.helptext import HelpFormatter
from vmem.logs import configure_logging

log = logging.getLogger("vmem.demo")
ENCODERS = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]


@dataclass
class DemoConfig:
    work: str = ".demo"
    report: str = "report"
    train_per_class: int = 200
    test_per_class: int = 50
    new_class: str = "Bag"
    forget: int = 20
    shards: int = 2
    port: int = 0  # 0: a free port on 127.0.0.1
    encoders: list[str] = field(default_factory=lambda: list(ENCODERS))
    per_class: list[int] = field(default_factory=lambda: [1, 10, 100, 0])
    experiments: bool = True
    device: str = "auto"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_records(pattern: str) -> list[ImageRecord]:
    source = WebDatasetSource()
    return [record for task in source.plan(pattern) for record in source.read(task)
            if isinstance(record, ImageRecord)]


def prepare_data(config: DemoConfig) -> dict[str, str]:
    from pipelines.data.fashion_mnist import CLASSES, write_fashion_mnist

    data = storage.join(config.work, "data")
    old = [c for c in CLASSES if c != config.new_class]
    write_fashion_mnist(storage.join(data, "memory"), ("train",), config.train_per_class, 1000, classes=old)
    write_fashion_mnist(storage.join(data, "new-class"), ("train",), config.train_per_class, 1000,
                        classes=[config.new_class])
    write_fashion_mnist(storage.join(data, "queries"), ("test",), config.test_per_class, 1000)
    return {part: storage.join(data, part, "*.tar") for part in ("memory", "new-class", "queries")}


def score(answers: list, records: list[ImageRecord], new_class: str) -> dict:
    right = [a.label == r.label for a, r in zip(answers, records)]
    new = [ok for ok, r in zip(right, records) if r.label == new_class]
    old = [ok for ok, r in zip(right, records) if r.label != new_class]
    return {"all": sum(right) / len(right), "old": sum(old) / max(len(old), 1),
            "new": sum(new) / max(len(new), 1)}


def serve_stages(config: DemoConfig, inputs: dict[str, str], memory: str) -> dict:
    """Steps 4-7: everything through the HTTP API of a Serve app on loopback."""
    import ray

    from serving.serve import DEFAULT_CONFIG, load_config, start, take_down
    from vmem.client import MemoryClient

    # Replica logs stay in Ray's log files (/tmp/ray/session_latest/logs): the demo prints its own.
    from indexer.localray import init

    init(include_dashboard=False, log_to_driver=False)
    token = secrets.token_urlsafe(24)  # this run's mutation token; never leaves the process
    port = config.port or free_port()
    # the only place item sources may point to (the API refuses others; read-back reads only here)
    data = storage.join(config.work, "data")
    roots = [data if "://" in data else os.path.abspath(data)]
    served = load_config(DEFAULT_CONFIG, memory, "127.0.0.1", port,
                         {"token": token, "allowed_source_roots": roots,
                          # a free port, not the packaged 8001: a `vmem serve` left running keeps its own
                          "data_plane_port": free_port()})
    application = served["applications"][0]["name"]
    start(served)
    client = MemoryClient(f"http://127.0.0.1:{port}", token)

    def classify_records(records: list[ImageRecord]) -> list:
        return client.classify_many([r.data for r in records], k=100)

    queries, unseen = read_records(inputs["queries"]), read_records(inputs["new-class"])
    stages = {}
    try:
        def classify(stage: str, extra: dict | None = None) -> list:
            tick = time.monotonic()
            answers = classify_records(queries)
            info = client.memory()
            stages[stage] = {"size": info["size"], "version": info["version"], **score(answers, queries, config.new_class),
                             "seconds": round(time.monotonic() - tick, 2), **(extra or {})}
            print(f"[demo] {stage}: {len(queries)} queries over HTTP, accuracy {pct(stages[stage]['all'])}% "
                  f"(old classes {pct(stages[stage]['old'])}%, {config.new_class} {pct(stages[stage]['new'])}%)",
                  flush=True)
            return answers

        classify("served")
        tick = time.monotonic()
        client.add([r.data for r in unseen], [r.label for r in unseen], keys=[r.key for r in unseen],
                   sources=[r.source for r in unseen])
        added = time.monotonic() - tick
        after_add = classify(f"after adding {config.new_class}", {"added": len(unseen), "edit_seconds": round(added, 2)})
        evidence = Counter(n.key for a in after_add for n in a.neighbours[:1])
        doomed = [key for key, _ in evidence.most_common(config.forget)]
        sources = {n.key: n.source for a in after_add for n in a.neighbours if n.key in doomed}
        tick = time.monotonic()
        report = client.forget(keys=doomed).details
        forgot = time.monotonic() - tick
        after_forget = classify("after forgetting", {"forgotten": report["removed"], "edit_seconds": round(forgot, 2)})
        images = read_sources(list(sources.values()), roots)
        themselves = classify_records([ImageRecord(k, s, "", images[s]) for k, s in sources.items() if s in images])
        returned = sum(n.key in doomed for a in after_forget + themselves for n in a.neighbours)
        influenced = sum(any(n.key in doomed for n in a.neighbours) for a in after_add)
        changed = sum(a.label != b.label for a, b in zip(after_add, after_forget))
        stages["forget"] = {"keys": doomed, "returned": returned, "influenced": influenced, "changed": changed,
                            "self_queries": len(themselves), "seconds_per_item": report["seconds"] / max(report["removed"], 1)}
    finally:
        take_down(application, joined=False)  # then its own instance, Serve's controller with it
        ray.shutdown()  # a no-op unless the deletion timed out
        print("[demo] Serve and Ray stopped", flush=True)
    return stages


def demo_result(config: DemoConfig, stages: dict, timings: dict) -> Result:
    shown = [stage for stage in stages if stage != "forget"]
    plot = plots.bar_plot(storage.join(config.report, "demo.png"), shown,
                          {"all queries": [stages[s]["all"] for s in shown],
                           "old classes": [stages[s]["old"] for s in shown],
                           config.new_class: [stages[s]["new"] for s in shown]},
                          "accuracy (HTTP answers, rank voting, k = 100)", "The served memory, edited live",
                          ylim=(0.0, 1.0))
    rows = [[stage, s["size"], s["version"], pct(s["all"]), pct(s["old"]), pct(s["new"]), s["seconds"]]
            for stage, s in stages.items() if stage != "forget"]
    served, added, forgotten = (stages[k] for k in list(stages)[:3])
    forget = stages["forget"]
    checks = [Check(f"{config.new_class} unknown before it is added", served["new"] == 0.0,
                    f"{pct(served['new'])}% of {config.new_class} queries right with no {config.new_class} in memory"),
              Check(f"{config.new_class} recognised right after adding its images", added["new"] >= 0.5,
                    f"{pct(added['new'])}% after POSTing {added['added']} images in {added['edit_seconds']} s"),
              Check("old classes keep their accuracy", abs(added["old"] - served["old"]) <= 0.02,
                    f"{pct(served['old'])}% -> {pct(added['old'])}% (tolerance 2 points)"),
              Check("forgotten images never come back", forget["returned"] == 0,
                    f"{forgotten['forgotten']} forgotten; {forget['returned']} appearances in the answers "
                    f"to every test query and to the {forget['self_queries']} forgotten images themselves")]
    setup = (f"Fashion-MNIST, {config.train_per_class} train images per class in memory except "
             f"{config.new_class}, {config.test_per_class} test images per class as queries; Beam ingest "
             f"{timings['ingest']:.0f} s, Ray build ({config.shards} shards) {timings['build']:.0f} s; Serve on "
             f"127.0.0.1, every query an HTTP request of the batch API (k = 100, rank voting). The forgotten "
             f"{len(forget['keys'])} images were the most frequent nearest neighbours: {forget['influenced']} queries "
             f"had one in their top-100, {forget['changed']} changed decision.")
    return Result("demo", "Demo: ingest, build, serve, add a class, forget", "Knowledge is added by adding images and removed "
                  "by deleting them, with no training; each answer comes with its evidence.", setup,
                  ["stage", "memory size", "version", "accuracy", "old classes", config.new_class, "seconds"],
                  rows, checks, plot, data={"stages": stages, "timings": timings}, seconds=timings["total"])


def run_demo(config: DemoConfig) -> list[Result]:
    from indexer.build import BuildConfig, run_build
    from indexer.executor import RayExecutor
    from pipelines.ingest import IngestConfig, run_ingest

    started = time.monotonic()
    memory, queries = storage.join(config.work, "memory"), storage.join(config.work, "queries")
    for root in (memory, queries, storage.join(config.work, "work")):
        storage.remove(root)  # the demo owns these: every run starts from the data
    clear_results(config.report)
    print("[demo] 1/8 data: Fashion-MNIST shards", flush=True)
    inputs = prepare_data(config)
    timings = {}
    tick = time.monotonic()
    print("[demo] 2/8 ingest (Beam, offline encoder)", flush=True)
    for pattern, root, batch in ((inputs["memory"], memory, "fashion-mnist-train"),
                                 (inputs["queries"], queries, "fashion-mnist-test")):
        print("[demo]   " + run_ingest(IngestConfig([pattern], root, batch, device=config.device)).summary(), flush=True)
    timings["ingest"] = time.monotonic() - tick
    tick = time.monotonic()
    print(f"[demo] 3/8 build (Ray, {config.shards} shards)", flush=True)
    manifest = run_build(BuildConfig(memory, num_shards=config.shards), RayExecutor())
    timings["build"] = time.monotonic() - tick
    print(f"[demo]   version {manifest.version}: {manifest.count} items, {manifest.factory}", flush=True)
    import ray

    ray.shutdown()  # Serve starts its own instance on loopback
    print("[demo] 4-7/8 serve on 127.0.0.1, add a class, forget, stop", flush=True)
    stages = serve_stages(config, inputs, memory)
    timings["total"] = time.monotonic() - started
    results = [demo_result(config, stages, timings)]
    results[0].write(config.report)
    if config.experiments:
        print("[demo] 8/8 experiments", flush=True)
        from experiments.cli import EXPERIMENTS, build_parser, make_context, run_experiment

        args = build_parser().parse_args(["all", "--memory", memory, "--queries", queries, "--out", config.report,
                                          "--work", storage.join(config.work, "work"), "--device", config.device,
                                          "--encoders", ",".join(config.encoders), "--hold-out",
                                          "Trouser,Sandal", "--per-class",
                                          ",".join(str(n) for n in config.per_class)])
        context = make_context(args)
        for name in EXPERIMENTS:
            tick = time.monotonic()
            print(f"[demo]   {name} ...", end=" ", flush=True)  # memory-size embeds for a minute
            result = run_experiment(name, context, args)
            result.write(config.report)
            results.append(result)
            print(f"{sum(c.passed for c in result.checks)}/{len(result.checks)} checks "
                  f"in {time.monotonic() - tick:.1f} s", flush=True)
    report = write_report(config.report)
    print("\n".join(["", "summary", *summary_lines(results)]))
    print(f"\n[demo] done in {time.monotonic() - started:.0f} s; open {report} in a browser")
    return results


def main(argv: list[str] | None = None) -> int:
    defaults = DemoConfig()
    parser = argparse.ArgumentParser(prog="vmem demo", description=__doc__,
                                     formatter_class=HelpFormatter)
    parser.add_argument("--work", default=defaults.work, help="Data, memory and derived memories.")
    parser.add_argument("--report", default=defaults.report, help="Where index.html and results go.")
    parser.add_argument("--train-per-class", type=int, default=defaults.train_per_class,
                        help="Training images per class in the memory (default %(default)s; "
                             "Fashion-MNIST has 6,000).")
    parser.add_argument("--test-per-class", type=int, default=defaults.test_per_class,
                        help="Query images per class (default %(default)s; at most 1,000).")
    parser.add_argument("--new-class", default=defaults.new_class,
                        help="Class kept out of memory, then added through the API (default %(default)s).")
    parser.add_argument("--forget", type=int, default=defaults.forget,
                        help="Images most used as evidence, forgotten through the API (default %(default)s).")
    parser.add_argument("--shards", type=int, default=defaults.shards, help="Index shards (default %(default)s).")
    parser.add_argument("--port", type=int, default=0, help="HTTP port on 127.0.0.1 (default: a free one).")
    parser.add_argument("--encoders", default=",".join(defaults.encoders),
                        help="Encoders of the memory-size experiment (comma list; default %(default)s).")
    parser.add_argument("--per-class", type=int_list, default=[1, 10, 100, 0],
                        help="Memory sizes per class of the memory-size experiment, 'all' for "
                             "every image (as vmem eval memory-size; default 1,10,100,all).")
    parser.add_argument("--no-experiments", action="store_true", help="Stop after the serving stages.")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N.")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    run_demo(DemoConfig(args.work, args.report, args.train_per_class, args.test_per_class, args.new_class,
                        args.forget, args.shards, args.port, [e for e in args.encoders.split(",") if e],
                        args.per_class, not args.no_experiments, args.device))
    return 0


if __name__ == "__main__":
    from indexer import program

    program.run(main)
