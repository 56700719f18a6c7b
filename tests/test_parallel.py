"""pytest-xdist: the same JSON as a serial run, and one frozen baseline per cache however many
processes ask for it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("xdist")


def _run(pytester, cache, *args):
    env = {**os.environ, "PYTEST_FA_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--fa-device=cpu", *args],
        cwd=pytester.path, env=env, capture_output=True, text=True, timeout=600,
    )


def test_a_parallel_run_writes_the_serial_json(pytester, bp_bundle, dfa_bundle, tmp_path):
    cache = tmp_path / "cache"
    checkpoints = [f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={dfa_bundle}"]
    _run(pytester, cache, *checkpoints)  # trains the shared frozen baseline into the cache
    serial = _run(pytester, cache, *checkpoints, "--fa-report-json=serial.json", "--fa-report-md=serial.md")
    parallel = _run(pytester, cache, *checkpoints, "-n", "2", "--dist", "loadscope", "-v",
                    "--fa-report-json=parallel.json", "--fa-report-md=parallel.md", "--fa-plot=figures")
    assert "2 workers" in parallel.stdout, parallel.stdout + parallel.stderr
    workers = {}  # checkpoint -> the workers that ran its items, from lines "[gw0] ... fa-protocol[X]::item"
    for line in parallel.stdout.splitlines():
        found = re.match(r"\[(gw\d+)\].*fa-protocol\[(.+?)\]::", line)
        if found:
            workers.setdefault(found[2], set()).add(found[1])
    assert sorted(workers) == sorted(map(str, [bp_bundle, dfa_bundle])), parallel.stdout
    assert all(len(ran) == 1 for ran in workers.values()), workers
    assert serial.returncode == parallel.returncode
    one = json.loads((pytester.path / "serial.json").read_text())
    two = json.loads((pytester.path / "parallel.json").read_text())
    assert [r["label"] for r in two["reports"]] == [r["label"] for r in one["reports"]]
    assert two == one
    assert (pytester.path / "parallel.md").read_text() == (pytester.path / "serial.md").read_text()
    assert sorted(p.name for p in (pytester.path / "figures").iterdir()) == ["bp_s42.png", "dfa_s42.png"]
    assert "pytest-fa protocol" in parallel.stdout and "dfa_s42.pt" in parallel.stdout.split("pytest-fa protocol")[1]


CONCURRENT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from pytest_fa.protocol import ProtocolRunner, ProtocolSettings

    bundle, cache, ready = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    runner = ProtocolRunner(ProtocolSettings(device="cpu"))
    runner.run(bundle)
    (ready / str(os.getpid())).touch()
    while len(list(ready.iterdir())) < 2:  # both ask for the baseline at the same moment
        time.sleep(0.01)
    baseline = runner.frozen_baseline(bundle, cache)
    print(baseline.source, repr(baseline.accuracy))
    """
)


def test_two_concurrent_runs_train_one_baseline_and_leave_a_readable_cache(bp_bundle, tmp_path):
    from pytest_fa.training.checkpoint import load_bundle

    cache, ready = tmp_path / "shared", tmp_path / "ready"
    ready.mkdir()
    script = tmp_path / "ask.py"
    script.write_text(CONCURRENT)
    procs = [
        subprocess.Popen([sys.executable, str(script), str(bp_bundle), str(cache), str(ready)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    sources = sorted(out.split()[0] for out, _ in outs)
    assert sources == ["cache", "trained"]
    assert len({out.split()[1] for out, _ in outs}) == 1  # both report the one baseline's accuracy
    (file,) = cache.glob("frozen-*.pt")
    assert load_bundle(file).metrics["baseline_key"]
    assert not list(cache.glob("*.tmp"))


KILL_THE_DFA_WORKER = textwrap.dedent(
    """
    import os, signal, time
    from pathlib import Path

    import pytest

    DONE = Path(__file__).parent / "bp-done"  # the checkpoints lie beside this conftest, in reach of its hooks

    def pytest_runtest_logfinish(nodeid):
        if "bp_s42" in nodeid and nodeid.endswith("::frozen_margin"):
            DONE.touch()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(item):
        if "dfa_s42" in item.nodeid:  # the worker with the DFA checkpoint dies once BP is done
            deadline = time.monotonic() + 300
            while not DONE.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_crashed_worker_loses_only_its_own_checkpoint(pytester, bp_bundle, dfa_bundle, tmp_path):
    pytester.makeconftest(KILL_THE_DFA_WORKER)
    for bundle in (bp_bundle, dfa_bundle):
        (pytester.path / Path(bundle).name).write_bytes(Path(bundle).read_bytes())
    result = _run(pytester, tmp_path / "cache", "--fa-checkpoint=bp_s42.pt", "--fa-checkpoint=dfa_s42.pt",
                  "--fa-frozen-acc=0.1", "-n", "2", "--dist", "loadscope", "--max-worker-restart=0",
                  "--fa-report-json=report.json")
    out = result.stdout + result.stderr
    assert "worker gw1 crashed" in out or "worker gw0 crashed" in out, out
    assert "INTERNALERROR" not in out, out
    assert result.returncode == pytest.ExitCode.TESTS_FAILED
    payload = json.loads((pytester.path / "report.json").read_text())
    assert [r["label"] for r in payload["reports"]] == ["bp_s42.pt"]
    assert payload["partial"] is True and payload["not_measured"] == ["dfa_s42.pt"]
    assert "1 of 2 checkpoints not measured (dfa_s42.pt)" in result.stdout
