"""The `vmem` entry point and every job's --help."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vmem.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmem", *args], capture_output=True, text=True,
                          timeout=120)


def test_top_level_help_lists_commands():
    out = run("--help")
    assert out.returncode == 0
    assert "ingest" in out.stdout and "data" in out.stdout


@pytest.mark.parametrize("command, expected", [
    ("ingest", ["--input", "--memory", "--encoder", "--weights", "--runner", "DataflowRunner"]),
    ("data", ["fashion-mnist"]),
    ("index", ["build", "add", "delete", "compact", "forget-status", "prune", "log", "rollback", "verify", "gc"]),
    ("serve", ["--memory", "--port", "--config"]),
    ("classify", ["--queries", "--out", "--aggregator"]),
    ("eval", ["aggregation", "new-classes", "memory-size", "unlearning", "pruning", "label-noise",
              "interpretability", "reranking", "all", "report"]),
    ("demo", ["--train-per-class", "--new-class", "--forget", "--no-experiments"]),
    ("update", ["--input", "--memory", "--batch", "--reload-url"]),
])
def test_command_help_explains_options(command, expected, capsys):
    # In-process (the entry point's own dispatch, `vmem.cli.main`): a subprocess per command
    # would import Beam and torch again for each; the tests above and the jobs' own tests run
    # `python -m vmem` as a process.
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out
    # Descriptions are module docstrings: their reStructuredText literals show as plain text.
    assert "``" not in out


@pytest.mark.parametrize("argv", [["index", "--help"], ["import", "--help"], ["serve", "--help"],
                                  ["index", "build", "--help"], ["eval", "pruning", "--help"]])
def test_help_shows_no_restructuredtext_markup(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    assert out.strip() and "``" not in out


@pytest.mark.parametrize("module", ["indexer.cli", "experiments.cli", "pipelines.data.__main__"])
def test_every_subcommand_formats_its_help_without_markup(module):
    """argparse does not pass a parser's formatter on to its subparsers: each must ask."""
    import argparse
    import importlib

    from vmem.helptext import HelpFormatter

    parser = importlib.import_module(module).build_parser()
    subparsers = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    assert subparsers
    for action in subparsers:
        for name, sub in action.choices.items():
            assert sub.formatter_class is HelpFormatter, f"{module} {name}"


@pytest.mark.parametrize("argv", [["index", "gc", "--help"], ["index", "delete", "--help"],
                                  ["data", "fashion-mnist", "--help"], ["index", "--help"]])
def test_help_fits_the_terminal(argv, capsys, monkeypatch):
    """A subcommand's one-line description is wrapped; a docstring keeps its own lines."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit):
        main(argv)
    assert max(len(line) for line in capsys.readouterr().out.splitlines()) <= 100


def test_help_formatter_keeps_line_breaks_and_drops_only_literal_markup():
    from vmem.helptext import plain

    assert plain("run ``vmem index build``\n  then ``x`` and `y`") == "run vmem index build\n  then x and `y`"


def test_unknown_command_is_an_error():
    out = run("fly")
    assert out.returncode == 2 and "unknown command" in out.stderr


def test_no_command_is_an_error_and_version_is_printed(capsys):
    assert main([]) == 2 and "usage: vmem <command>" in capsys.readouterr().err
    assert main(["--version"]) == 0 and capsys.readouterr().out.startswith("vmem 0.")


@pytest.mark.parametrize("command, extra", [
    (["ingest", "--input", "a.tar", "--memory", "m"], ["--encodr", "efficientnet-lite1"]),
    (["update", "--input", "a.tar", "--memory", "m", "--batch", "day-1"], ["--encodr", "x"]),
    (["ingest", "--input", "a.tar", "--memory", "m"], ["b.tar"]),  # one value per --input
])
def test_an_argument_neither_the_job_nor_beam_defines_is_refused(command, extra, capsys, tmp_path):
    # Beam only logs an argument no PipelineOptions class defines and runs without it: a
    # mistyped option would silently leave its default in force. Refused before anything runs.
    with pytest.raises(SystemExit) as exited:
        main([*command, *extra])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"option: {extra[0]}" in err, err
    assert ("did you mean --encoder?" in err) == extra[0].startswith("--encodr")
    assert not (tmp_path / "m").exists()


def test_beam_pipeline_options_pass():
    from pipelines.beam_args import unknown_pipeline_args

    assert unknown_pipeline_args(["--runner", "DataflowRunner", "--project=p", "--temp_location",
                                  "gs://b/tmp", "--direct_num_workers", "2", "--streaming"]) == []
    assert unknown_pipeline_args(["--runner", "DirectRunner", "--colour=red", "stray"]) == ["--colour=red", "stray"]
    assert unknown_pipeline_args(["--runner=DataflowRunner", "--experiments", "a", "--experiments", "b",
                                  "--max_num_workers", "-1", "--save_main_session", "--flink_master",
                                  "h:8081", "--dataflow_service_options=x=y"]) == []
    # Beam drops these: a dashed spelling of its option, a bare --, a value after a flag
    assert unknown_pipeline_args(["--direct-num-workers", "4", "--", "--streaming", "x"]) == [
        "--direct-num-workers", "--", "x"]


def test_refused_beam_arguments_get_the_closest_beam_option(capsys):
    with pytest.raises(SystemExit):
        main(["ingest", "--input", "a.tar", "--memory", "m", "--runer", "DataflowRunner",
              "--temp-location", "gs://b/tmp"])
    err = capsys.readouterr().err
    assert "--runer (did you mean --runner?), --temp-location (did you mean --temp_location?)." in err


PROGRAM = """
import sys
import vmem.cli

def command(argv):
    import ctypes

    import ray  # noqa: F401  (a command that used Ray: the program then ends through os._exit)

    print("written before exit", end="")  # no newline: still in stdout's buffer
    ctypes.CDLL(None).printf(b"|by C")  # C stdio's buffer (a pipe: fully buffered)
    if argv == ["raise"]:
        raise ValueError("a bug")
    if argv == ["usage"]:
        raise SystemExit(2)
    if argv == ["interrupt"]:
        raise KeyboardInterrupt
    return 3

vmem.cli.main = command
vmem.cli.run(sys.argv[1:])
"""


@pytest.mark.parametrize("argv, status", [([], 3), (["raise"], 1), (["usage"], 2), (["interrupt"], -2)])
def test_the_program_exits_with_its_status_after_ray_ran_in_it(argv, status):
    # After Ray, `vmem` ends with os._exit once Python's exit work is done (indexer.program.run):
    # the command's status (Ctrl-C: killed by SIGINT, as Python ends), its buffered output
    # (Python's and C's) and an uncaught error's traceback must all survive.
    done = subprocess.run([sys.executable, "-c", PROGRAM, *argv], capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == status, done.stderr[-2000:]
    assert sorted(done.stdout.split("|")) == ["by C", "written before exit"]
    assert ("ValueError: a bug" in done.stderr) == (argv == ["raise"])


def test_the_program_ends_without_teardown_even_when_its_output_pipe_is_closed():
    # A reader gone (`vmem update ... | head`): flushing fails, the process still ends through
    # os._exit with the command's status, not through the native teardown (status 120).
    reader, writer = os.pipe()
    os.close(reader)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered: fails at exit
    done = subprocess.run([sys.executable, "-c", PROGRAM], stdout=writer, stderr=subprocess.PIPE,
                          text=True, timeout=180, env=env)
    os.close(writer)
    assert done.returncode == 3, done.stderr[-2000:]


@pytest.mark.parametrize("command", ["ingest", "update", "data", "index", "import", "serve", "classify", "eval", "demo"])
def test_help_imports_neither_beam_nor_torch_nor_ray(command):
    # A job's --help is its parser only: the engines load when the job runs.
    probe = ("import sys\nfrom vmem.cli import main\ntry:\n    main([sys.argv[1], '--help'])\n"
             "except SystemExit:\n    pass\n"
             "print(sorted({'apache_beam', 'torch', 'ray'} & set(sys.modules)), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe, command], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "[]", done.stderr[-2000:]


def test_serve_refuses_a_busy_or_impossible_port_in_one_line(capsys, tmp_path, monkeypatch):
    import socket

    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # a local start: the ports are this machine's

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--memory", str(tmp_path), "--port", "99999"])
    assert exited.value.code == 2 and "99999 is not a port" in capsys.readouterr().err
    with socket.socket() as busy:  # a server left running: checked before Ray starts
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--memory", str(tmp_path), "--port", str(port), "--data-plane-port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vmem serve: error: cannot listen on 127.0.0.1:{port} (Address already in use); "
                   f"another server (a `vmem serve` left running?) holds it: choose another with --port"]
    assert main(["serve", "--memory", str(tmp_path), "--port", "18769", "--data-plane-port", "18769"]) == 1
    assert "--port and --data-plane-port are both 18769" in capsys.readouterr().err


def test_index_commands_on_a_missing_memory_or_a_bad_id_say_so(capsys, tmp_path):
    assert main(["index", "log", "--memory", str(tmp_path / "none")]) == 1
    assert "no published version under" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["index", "delete", "--memory", str(tmp_path), "--id", "abc", "--no-ray"])
    assert exited.value.code == 2 and "argument --id: invalid int value: 'abc'" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--per-class", "0"), ("--per-class", "-1"), ("--shard-size", "0")])
def test_data_refuses_counts_below_one(flag, value, capsys, tmp_path):
    with pytest.raises(SystemExit) as exited:
        main(["data", "fashion-mnist", "--out", str(tmp_path / "d"), flag, value])
    assert exited.value.code == 2 and f"argument {flag}: must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("command", [["index", "build"], ["index", "compact"]])
def test_index_jobs_refuse_a_ray_instance_without_cpus_before_any_work(command, capsys, tmp_path):
    """A build starts its own instance at the add, after training: --num-cpus 0 (tasks that
    would never be scheduled) is refused at parse time instead."""
    with pytest.raises(SystemExit) as exited:
        main([*command, "--memory", str(tmp_path), "--num-cpus", "0"])
    assert exited.value.code == 2 and "argument --num-cpus: must be at least 1" in capsys.readouterr().err


def test_serve_refuses_a_memory_without_an_index_before_starting_ray(capsys, tmp_path, monkeypatch):
    """A wrong --memory fails at once, in one line, rather than after Ray and Serve started
    and the replicas failed to load it."""
    import socket

    import serving.serve

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = []
    monkeypatch.setattr(serving.serve, "connect", started.append)  # Ray's start, not made here
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert main(["serve", "--memory", str(tmp_path / "none"), "--port", str(port),
                 "--data-plane-port", "0"]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"vmem serve: error: no index under {tmp_path / 'none'}/index (run `vmem index build`)"]
    # the options too: a relative source root is refused here, not by the replicas
    assert main(["serve", "--memory", str(tmp_path / "none"), "--port", str(port),
                 "--data-plane-port", "0", "--allow-source-root", "data"]) == 1
    assert "relative" in capsys.readouterr().err
    assert started == []


def test_serve_says_what_is_off_and_adds_source_roots():
    from serving.serve import DEFAULT_CONFIG, access_notices, add_source_roots, load_config

    config = load_config(DEFAULT_CONFIG, "mem")
    assert add_source_roots(config, []) is config["applications"][0]["args"]
    assert config["applications"][0]["args"]["allowed_source_roots"] == []
    args = add_source_roots(config, ["/data/images", "gs://bucket/images/"])
    assert args["allowed_source_roots"] == ["/data/images", "gs://bucket/images/"]

    assert access_notices(args, environ={"VMEM_TOKEN": "secret"}) == []
    off = access_notices({**args, "allowed_source_roots": []}, environ={})
    assert off == [("edits are off: no admin token (set VMEM_TOKEN before `vmem serve` to turn "
                    "them on)"),
                   "thumbnails are off: no allowed source root (--allow-source-root DIR)"]
    assert access_notices({**args, "token": "literal"}, environ={}) == []  # a literal token
    assert access_notices({**args, "token_env": "OTHER"}, environ={"VMEM_TOKEN": "x"})[0].startswith(
        "edits are off: no admin token (set OTHER")


def test_logging_keeps_the_libraries_chatter_out_unless_debugging():
    """Beam's per-step INFO, faiss's loader and torch's exit statistics stay out at INFO;
    Serve's "Connecting to existing Serve app" (its own serve.run after ours) is dropped at
    every level; all of them show at DEBUG."""
    import logging

    from vmem.logs import CHATTY, configure_logging

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.name, record.getMessage()))

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info")
        root.addHandler(Keep())
        logging.getLogger("apache_beam.typehints").info("Converting string literal type hint")
        logging.getLogger("faiss.loader").info("Could not load library with AVX512 support")
        logging.getLogger("torch._subclasses.fake_tensor").info("FakeTensor cache stats")
        logging.getLogger("ray.serve").info('Connecting to existing Serve app in namespace "serve".')
        logging.getLogger("apache_beam.io").warning("a real warning")
        logging.getLogger("vmem.index").info("building")
        assert records == [("apache_beam.io", "a real warning"), ("vmem.index", "building")]

        records.clear()
        configure_logging("DEBUG")
        root.addHandler(Keep())
        logging.getLogger("apache_beam.typehints").info("Converting string literal type hint")
        logging.getLogger("ray.serve").info('Connecting to existing Serve app in namespace "serve".')
        assert records == [("apache_beam.typehints", "Converting string literal type hint")]
        with pytest.raises(ValueError, match="unknown logging level 'loud'"):
            configure_logging("loud")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for name in CHATTY:
            logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.mark.parametrize("command", [["compact", "--no-ray"], ["delete", "--key", "x", "--no-ray"],
                                     ["rollback"], ["gc", "--keep", "1"], ["add", "--batch", "b", "--no-ray"],
                                     ["prune", "soft", "--no-ray"]])
def test_index_edits_refuse_a_memory_with_no_index_before_taking_the_lock(tmp_path, capsys, command,
                                                                        monkeypatch):
    """A mistyped --memory is refused in one line, as build, log and verify refuse it, and
    nothing is made there (the writer lock created `nomem/index/.writer.lock`, and gc reported
    success), nor an executor (`add` started Ray first); a memory holding only embedding
    batches has no index to edit either (gc may still collect its Beam temp folders there)."""
    from indexer import executor

    def no_executor(*args, **kwargs):
        raise AssertionError("an executor was made for a memory with no index")

    monkeypatch.setattr(executor, "make_executor", no_executor)
    missing = tmp_path / "nomem"
    assert main(["index", *command, "--memory", str(missing)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vmem index: error: no index under {missing}/index (run `vmem index build`)"
                   if command[0] != "gc" else
                   f"vmem index: error: no memory under {missing}: neither {missing}/index nor "
                   f"{missing}/embeddings exists"]
    assert not missing.exists()
    if command[0] != "gc":
        unbuilt = tmp_path / "unbuilt"
        (unbuilt / "embeddings").mkdir(parents=True)
        assert main(["index", *command, "--memory", str(unbuilt)]) == 1
        assert capsys.readouterr().err.strip().splitlines() == [
            f"vmem index: error: no index under {unbuilt}/index (run `vmem index build`)"]
        assert not (unbuilt / "index").exists()
