"""bench/proctree.run_measured's deadline (bench/index.py --autofaiss-deadline): a build still
running at the deadline is stopped with its whole tree and reported as stopped, not failed.
Run in a fresh interpreter: the measuring process becomes a child subreaper."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _measure(command: list[str], deadline: float | None, tmp_path: Path) -> dict:
    script = textwrap.dedent(f"""
        import json
        from bench import proctree
        proctree.become_subreaper()
        tree = proctree.run_measured({command!r}, {str(tmp_path / 'out')!r}, {str(tmp_path / 'err')!r},
                                     interval=0.1, teardown_timeout=30, deadline={deadline!r})
        left = [p.name() for p in proctree.psutil.Process().children(recursive=True)]
        print(json.dumps({{**tree, "left": left}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_build_past_its_deadline_is_stopped_with_every_descendant(tmp_path):
    # a grandchild that would outlive its parent by a minute, and a parent that never ends
    tree = _measure(["/bin/sh", "-c", "sleep 60 & exec sleep 60"], 1.0, tmp_path)
    assert tree["stopped_at_deadline"] is True
    assert 1.0 <= tree["wall_seconds"] < 30
    assert tree["killed_at_teardown"] == ["sleep"] and tree["left"] == []


def test_a_build_within_its_deadline_is_measured_as_before(tmp_path):
    tree = _measure(["/bin/sh", "-c", "exit 0"], 60.0, tmp_path)
    assert tree["stopped_at_deadline"] is False and tree["killed_at_teardown"] == []
    failed = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from bench import proctree
        proctree.run_measured(["/bin/sh", "-c", "exit 3"], {str(tmp_path / 'o')!r}, {str(tmp_path / 'e')!r},
                              deadline=60.0)
    """)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert failed.returncode != 0 and "CalledProcessError" in failed.stderr


def test_a_sampler_alongside_measures_processes_outside_the_tree(tmp_path):
    """bench/index.py --ray-instance running: a running Ray instance's processes are not the
    build's descendants; they are sampled alongside it, and the build's teardown neither waits
    for them nor kills them. Stand-in for the instance: a CPU-bound process started before."""
    script = textwrap.dedent(f"""
        import json, subprocess, sys, time
        from bench import proctree
        # started as `ray start` starts its daemons: orphaned while this is no subreaper
        started = subprocess.run(["/bin/sh", "-c", sys.executable + " -c 'while True: pass' >/dev/null 2>&1 & echo $!"],
                                 capture_output=True, text=True, check=True)
        burner = proctree.psutil.Process(int(started.stdout))
        proctree.become_subreaper()
        outside = proctree.TreeSampler(lambda: [burner])
        outside.sample()
        before = sum(used for _, used in outside.cpu.values())
        tree = proctree.run_measured(["/bin/sh", "-c", "sleep 1.5"], {str(tmp_path / 'out')!r},
                                     {str(tmp_path / 'err')!r}, interval=0.1, teardown_timeout=30,
                                     alongside=outside)
        after = sum(used for _, used in outside.cpu.values())
        times = burner.cpu_times()  # read directly, just after
        direct = times.user + times.system - before
        alive = burner.is_running()
        burner.kill()
        print(json.dumps({{"tree_cpu": tree["cpu_seconds"], "outside_cpu": after - before, "direct_cpu": direct,
                          "tree_rss": tree["peak_rss_bytes"], "outside_rss": outside.peak_rss,
                          "together_rss": tree["peak_with_alongside"]["peak_rss_bytes"],
                          "wall": tree["wall_seconds"], "killed": tree["killed_at_teardown"],
                          "burner_alive": alive}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["burner_alive"] and out["killed"] == []
    assert out["tree_cpu"] < 0.3  # sleep: the burner is not in the build's tree
    # what the burner used over the build, as the sampler saw it (a busy machine may give it
    # less than a core: compared with its own clock, read just after, not with the wall time)
    assert 0 < out["outside_cpu"] <= out["direct_cpu"] < out["outside_cpu"] + 0.3
    # the peak of the two summed at each sample: above either alone, at most their peaks' sum
    assert max(out["tree_rss"], out["outside_rss"]) < out["together_rss"] <= out["tree_rss"] + out["outside_rss"]
