"""A cache folder that cannot be written (a read-only project or ``PYTEST_FA_CACHE``) never fails
the protocol items: a cached baseline is still read, a new one is trained into a temporary
folder with one warning.

A write is refused here by a file or folder in the way (a file where the cache's folder goes, a
folder where its lock file goes): that refuses it as root too, where a read-only mode does not.
"""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WARNING = "FACacheWarning: cannot write the pytest-fa cache"


def run(pytester: pytest.Pytester, checkpoint, *args: str) -> tuple[pytest.RunResult, str]:
    # the items judge a small BP bundle against a baseline trained on this machine (a margin of
    # 3.5-4.2 pp seen); a threshold far below it keeps every item passing on any realisation,
    # so an item fails only for the cache
    result = pytester.runpytest_subprocess("--fa-device=cpu", f"--fa-checkpoint={checkpoint}", "--fa-report-json=out.json",
                                           "--fa-frozen-margin-pp=-50", *args)
    text = result.stdout.str() + "\n" + result.stderr.str()
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    return result, text


def frozen_baseline(pytester: pytest.Pytester) -> str:
    (report,) = json.loads((pytester.path / "out.json").read_text())["reports"]
    return report["context"]["frozen_baseline"]


def test_a_cache_that_cannot_be_written_falls_back_to_a_temporary_folder_with_one_warning(
        pytester, bp_bundle, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    for folder in ("frozen", "mnist1d"):  # the baseline's and the data's folders cannot be made
        (cache / folder).write_text("")
    monkeypatch.setenv("PYTEST_FA_CACHE", str(cache))
    result, text = run(pytester, bp_bundle, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, warnings=1)
    assert text.count(WARNING) == 1
    assert "kept in" in text and "for this session only" in text and "PYTEST_FA_CACHE" in text
    assert "trained now" in frozen_baseline(pytester)


def test_a_cached_baseline_is_read_when_the_cache_cannot_be_written(pytester, bp_bundle, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PYTEST_FA_CACHE", str(cache))
    run(pytester, bp_bundle, "-p", "no:cacheprovider")[0].assert_outcomes(passed=4)
    locks = sorted((cache / "frozen").glob("*.lock"))
    assert locks and frozen_baseline(pytester).endswith(")") and "trained now" in frozen_baseline(pytester)
    for lock in locks:  # the lock cannot be opened, as in a read-only folder
        lock.unlink()
        lock.mkdir()
    result, text = run(pytester, bp_bundle, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)
    assert WARNING not in text
    assert "from cache" in frozen_baseline(pytester)


def test_a_project_folder_where_pytest_cannot_make_its_cache_falls_back_too(pytester, bp_bundle):
    shutil.rmtree(pytester.path / ".pytest_cache", ignore_errors=True)
    (pytester.path / ".pytest_cache").write_text("")  # pytest's cache folder cannot be made
    result, text = run(pytester, bp_bundle)
    assert result.ret == pytest.ExitCode.OK
    assert text.count(WARNING) == 1 and "-o cache_dir=DIR" in text
