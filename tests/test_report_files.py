"""The report files: written whole or not at all, never over an input or each other, and
marked partial when a checkpoint was not measured."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_fa.core.files import WriteError, write_atomically

pytestmark = pytest.mark.usefixtures("one_torch_thread")

OLD_JSON = '{"pytest_fa": "old", "reports": []}\n'


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # a Ctrl-C of the inner session is its own, not this session's
    return pytester.runpytest("--fa-device=cpu", "-p", "no:cacheprovider", "--fa-frozen-acc=0.1", *args,
                              no_reraise_ctrlc=True)


def run_subprocess(pytester: pytest.Pytester, *args: str) -> subprocess.CompletedProcess:
    """pytest in a subprocess whose output goes to pipes (not files, unlike ``runpytest_subprocess``)."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--fa-device=cpu", "--fa-frozen-acc=0.1", *args]
    return subprocess.run(command, cwd=pytester.path, capture_output=True, text=True, timeout=300)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


# -- the helper --------------------------------------------------------------------------


def test_write_atomically_replaces_the_file_whole(tmp_path):
    target = tmp_path / "out" / "report.json"
    assert write_atomically(target, "new text ✓") == target
    assert target.read_text(encoding="utf-8") == "new text ✓"
    write_atomically(target, b"\x00bytes")
    write_atomically(target.with_suffix(".bin"), lambda handle: handle.write(b"from a writer"))
    assert target.read_bytes() == b"\x00bytes"
    assert target.with_suffix(".bin").read_bytes() == b"from a writer"
    assert leftovers(tmp_path) == []


def test_a_disk_full_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text(OLD_JSON)

    def half_then_full(handle):
        handle.write(b'{"reports": [')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError) as info:
        write_atomically(target, half_then_full)
    assert str(info.value) == f"cannot write {target}: No space left on device; the previous file is unchanged"
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == OLD_JSON
    assert leftovers(tmp_path) == []
    with pytest.raises(WriteError, match="nothing was written"):
        write_atomically(tmp_path / "new.json", half_then_full)
    assert not (tmp_path / "new.json").exists()


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")

    def interrupted(handle):
        handle.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, interrupted)
    assert target.read_text() == "old" and leftovers(tmp_path) == []


def test_write_atomically_writes_through_a_symlink(tmp_path):
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    write_atomically(tmp_path / "link.json", "new")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"


# -- a report path that would overwrite something -----------------------------------------


@pytest.fixture
def victim(pytester, bp_bundle) -> Path:
    """A checkpoint in the test's folder, with hard- and symlinks to it."""
    path = pytester.path / "victim.pt"
    path.write_bytes(Path(bp_bundle).read_bytes())
    (pytester.path / "sub").mkdir()
    (pytester.path / "sub" / "link.pt").symlink_to(path)
    os.link(path, pytester.path / "hard.pt")
    return path


@pytest.mark.parametrize("flag", ["--fa-report-json", "--fa-report-md"])
@pytest.mark.parametrize("spelling", ["victim.pt", "./sub/../victim.pt", "sub/link.pt", "hard.pt"])
def test_a_report_path_that_is_a_checkpoint_is_refused(pytester, victim, flag, spelling):
    before = victim.read_bytes()
    result = run(pytester, "--fa-checkpoint=victim.pt", f"{flag}={spelling}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [f"*{flag}={spelling} is also --fa-checkpoint=victim.pt: writing the report would overwrite it; give another path*"]
    )
    assert victim.read_bytes() == before


def test_one_path_for_both_reports_is_refused(pytester, bp_bundle):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-report-json=out.txt", "--fa-report-md=./out.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--fa-report-md=./out.txt is also --fa-report-json=out.txt: writing the report would overwrite it*"]
    )
    assert not (pytester.path / "out.txt").exists()


def test_a_report_path_that_is_a_figure_is_refused(pytester, bp_bundle):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-plot=figures", "--fa-report-json=figures/bp_s42.png")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--fa-report-json=figures/bp_s42.png is also the --fa-plot figure of bp_s42.pt: writing the report would overwrite it*"]
    )


def test_a_report_path_in_a_symlink_loop_is_refused(pytester, bp_bundle):
    (pytester.path / "loop.json").symlink_to("loop.json")
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-report-json=loop.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fa-report-json=loop.json is a symlink loop; give the path of a file*"])
    assert "Traceback" not in result.stderr.str()


@pytest.mark.parametrize(
    "option, message",
    [
        ("--fa-report-json=", "*--fa-report-json='' is empty; give the path of a file*"),
        ("--fa-plot= ", "*--fa-plot=' ' is empty; give the path of a folder*"),
        (f"--fa-report-md={'n' * 300}.md", "*--fa-report-md=nnn*: a name in the path is too long for the file system*"),
    ],
)
def test_an_empty_or_overlong_report_path_is_refused(pytester, bp_bundle, option, message):
    """An empty --fa-plot wrote nothing and said nothing; a name over 255 bytes ended in a raw
    OSError from start-up."""
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_a_report_path_that_is_a_fifo_is_refused(pytester, bp_bundle):
    os.mkfifo(pytester.path / "pipe.md")
    # in a subprocess: writing into a FIFO that nobody reads blocks forever
    result = run_subprocess(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-report-md=pipe.md")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR
    assert ("--fa-report-md=pipe.md is not a regular file (a FIFO, socket or device); give the path of a file"
            in result.stderr)


# -- a write that fails ---------------------------------------------------------------------

FILE_SIZE_LIMIT = """
import resource, signal
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    # from here on no file of this process may grow beyond 1 KiB: writes fail with EFBIG
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
"""


def test_a_write_that_fails_midway_keeps_the_old_files_and_says_so(pytester, bp_bundle):
    pytester.makeconftest(FILE_SIZE_LIMIT)
    out = pytester.path / "out"
    (out / "figures").mkdir(parents=True)
    old = {"report.json": OLD_JSON, "report.md": "# old report\n", "figures/bp_s42.png": "old figure"}
    for name, text in old.items():
        (out / name).write_text(text)
    result = run_subprocess(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-report-json=out/report.json",
                            "--fa-report-md=out/report.md", "--fa-plot=out/figures")
    for name, text in old.items():
        assert (out / name).read_text() == text, name
    assert json.loads((out / "report.json").read_text())["pytest_fa"] == "old"
    assert leftovers(out) == []
    lines = result.stdout.splitlines()
    for flag, name in (("report-json", "report.json"), ("report-md", "report.md"), ("plot", "figures/bp_s42.png")):
        assert f"pytest-fa: --fa-{flag}: cannot write {out / name}: File too large; the previous file is unchanged" in lines
    assert "INTERNALERROR" not in result.stdout + result.stderr and "JSON report:" not in result.stdout
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, result.stdout + result.stderr


# -- an interrupted session ---------------------------------------------------------------

STOP_AT_DFA = """
import pytest

# the checkpoints are copied next to this conftest: its hooks reach only the items under its folder

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    if "dfa_s42" in item.nodeid:
        {stop}
"""


@pytest.mark.parametrize("stop", ["raise KeyboardInterrupt", "pytest.exit('stopped by the test')"],
                         ids=["ctrl-c", "pytest-exit"])
def test_an_interrupted_session_marks_the_reports_partial(pytester, bp_bundle, dfa_bundle, stop):
    for bundle in (bp_bundle, dfa_bundle):
        (pytester.path / Path(bundle).name).write_bytes(Path(bundle).read_bytes())
    args = ("--fa-checkpoint=bp_s42.pt", "--fa-checkpoint=dfa_s42.pt", "--fa-report-json=report.json",
            "--fa-report-md=report.md")
    complete = run(pytester, *args)
    full = json.loads((pytester.path / "report.json").read_text())
    assert full["partial"] is False and full["not_measured"] == [] and len(full["reports"]) == 2
    assert "pytest-fa: the reports are partial" not in complete.stdout.str()
    assert "Partial report" not in (pytester.path / "report.md").read_text()

    pytester.makeconftest(STOP_AT_DFA.format(stop=stop))
    result = run(pytester, *args)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    payload = json.loads((pytester.path / "report.json").read_text())
    assert payload["partial"] is True and payload["not_measured"] == ["dfa_s42.pt"]
    assert [r["label"] for r in payload["reports"]] == ["bp_s42.pt"]
    title, blank, note = (pytester.path / "report.md").read_text().splitlines()[:3]
    assert title.startswith("# pytest-fa protocol report") and blank == ""
    assert note == "**Partial report**: 1 of 2 checkpoints not measured: `dfa_s42.pt`."
    result.stdout.fnmatch_lines([
        "pytest-fa: the reports are partial: 1 of 2 checkpoints not measured (dfa_s42.pt); "
        "the files say so (\"partial\": true)",
    ])


def test_a_session_that_measured_nothing_writes_no_report(pytester, bp_bundle):
    (pytester.path / "report.json").write_text(OLD_JSON)
    (pytester.path / "bp_s42.pt").write_bytes(Path(bp_bundle).read_bytes())
    pytester.makeconftest(STOP_AT_DFA.replace("dfa_s42", "bp_s42").format(stop="raise KeyboardInterrupt"))
    result = run(pytester, "--fa-checkpoint=bp_s42.pt", "--fa-report-json=report.json")
    assert (pytester.path / "report.json").read_text() == OLD_JSON
    result.stdout.fnmatch_lines(["pytest-fa: no checkpoint was measured: --fa-report-json not written"])
