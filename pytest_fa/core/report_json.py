"""The ``--fa-report-json`` file: the text a run writes, and its reading back for ``--fa-compare``
with the checks that make a comparison against it sound. No torch."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_fa import __version__
from pytest_fa.core import registry
from pytest_fa.core.tolerance import CompareError, figures, get
from pytest_fa.errors import setting

if TYPE_CHECKING:
    from pytest_fa.core.report import DiagnosticReport

_WRITE_HINT = f"give a JSON file written by a previous run with {setting('report_json', 'PATH')}"
_RESAVE = f"re-save it with this version ({setting('report_json', 'PATH')})"
READS_FROM = (0, 1)  # the oldest major.minor whose reports this version reads (the report format of 0.1)


def report_json(reports: Sequence[DiagnosticReport], not_measured: list[str]) -> str:
    """The file's text: this version, whether it is partial (checkpoints ``not_measured``), each
    report and the seed groups."""
    from pytest_fa.core.seeds import seed_groups  # here: seeds imports statistics, which start-up need not pay for

    payload = {"pytest_fa": __version__, "partial": bool(not_measured), "not_measured": not_measured,
               "reports": [report.to_dict() for report in reports],
               "seed_groups": [group.to_dict() for group in seed_groups(reports)]}
    return json.dumps(payload, indent=2, ensure_ascii=False)


def checkpoint(report: Mapping[str, Any]) -> str | None:
    """``context.checkpoint``, normalised (``./a//b.pt`` is ``a/b.pt``); None when absent."""
    path = get(report, "context", "checkpoint")
    return os.path.normpath(path) if isinstance(path, str) and path else None


def load_saved_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``--fa-report-json`` file this version can compare with: JSON from a pytest-fa :data:`READS_FROM`
    up to this one, reports with a ``label``, no checkpoint twice, and every diagnostic compare reads
    with its ``fires`` and ``value`` (a missing one would let a regression pass unchecked)."""
    p = Path(path)
    source = f"saved report {p}"
    if not p.exists():
        raise CompareError(f"{source}: no such file; {_WRITE_HINT}")
    if p.is_dir():
        raise CompareError(f"{source} is a folder; give the JSON file inside it (the PATH of {setting('report_json')})")
    try:
        payload = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CompareError(f"{source} is not JSON (not UTF-8 text); {_WRITE_HINT}") from None
    except json.JSONDecodeError as exc:
        raise CompareError(f"{source} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                           f"{_WRITE_HINT}") from None
    except OSError as exc:
        raise CompareError(f"{source} cannot be read ({exc.strerror or exc}); check its permissions") from None
    declared = payload.get("pytest_fa") if isinstance(payload, Mapping) else None
    if declared is not None:  # before the layout: a newer version may lay it out otherwise
        written = re.match(r"(\d+)\.(\d+)", declared) if isinstance(declared, str) else None
        if written is None:
            raise CompareError(f"{source} declares the pytest-fa version {declared!r}, which is no version; {_RESAVE}")
        written = tuple(map(int, written.groups()))
        if written > tuple(map(int, re.match(r"(\d+)\.(\d+)", __version__).groups())):
            raise CompareError(f"{source} was written by pytest-fa {declared}, this is {__version__}; {_RESAVE}")
        if written < READS_FROM:
            raise CompareError(f"{source} was written by pytest-fa {declared}, whose reports this version "
                               f"({__version__}) does not read; {_RESAVE}")
    if not isinstance(payload, Mapping):
        raise CompareError(f"{source} is JSON but not a pytest-fa report: its top level is a "
                           f"{type(payload).__name__}, not an object with a \"reports\" list; {_WRITE_HINT}")
    if not isinstance(payload.get("reports"), list):
        keys = ", ".join(sorted(map(str, payload))) or "none"
        hint = " (it looks like a pytest-benchmark file)" if "benchmarks" in payload else ""
        raise CompareError(f"{source} is JSON but not a pytest-fa report: no \"reports\" list (top-level keys: "
                           f"{keys}){hint}; {_WRITE_HINT}")
    seen: dict[tuple[str, str], int] = {}
    for index, report in enumerate(payload["reports"]):
        if not (isinstance(report, Mapping) and isinstance(report.get("label"), str)
                and isinstance(report.get("diagnostics"), Mapping)):
            raise CompareError(f"{source} is not a pytest-fa report: reports[{index}] has no \"label\" text and "
                               f"\"diagnostics\" object; {_WRITE_HINT}")
        key = ("path", checkpoint(report)) if checkpoint(report) else ("label", report["label"])
        if key in seen:
            raise CompareError(f"{source} holds checkpoint {key[1]} twice (reports[{seen[key]}] and reports[{index}]), "
                               "so a comparison cannot tell which to use; write it again from a run that diagnoses "
                               "each checkpoint once")
        seen[key] = index
    if not payload["reports"]:
        raise CompareError(f"{source} holds no reports, so nothing to compare against; {_WRITE_HINT}")
    if declared is None:
        raise CompareError(f"{source} declares no \"pytest_fa\" version, so this version cannot tell whether it "
                           f"reads it; {_RESAVE}")
    for index, report in enumerate(payload["reports"]):
        for key in (f.diagnostic for f in figures().values() if f.diagnostic):
            where, name = f"{source}, reports[{index}] ({report['label']})", f"({key}) {registry.get(key).name}"
            result = report["diagnostics"].get(key)
            if not isinstance(result, Mapping):
                raise CompareError(f"{where} has no diagnostic {name} in \"diagnostics\", so a comparison could "
                                   f"not tell whether it crossed its threshold; {_WRITE_HINT}")
            for field, types, expected in (("fires", (bool, type(None)), "true, false or null (not evaluated)"),
                                           ("value", (int, float, type(None)), "a number or null")):
                if field not in result or type(result[field]) not in types:
                    found = repr(result[field]) if field in result else "missing"
                    raise CompareError(f"{where}: diagnostic {name}: \"{field}\" is {found}, not {expected}; "
                                       f"{_WRITE_HINT}")
    return payload
