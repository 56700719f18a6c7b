"""A golden run: the README's main-job protocol (``pytest --fa-checkpoint=… --fa-report-json=…
--fa-report-md=… --fa-plot=…``) on the fixed bundles of tests/data/golden/, compared with the
copy that tools/golden.py stored. A change of behaviour anywhere between a bundle and the
reports shows here: the exit status, each item's outcome, the verdicts, the structure of the
JSON and the Markdown must be identical, and the numbers equal within ``REL``/``ABS``.

Nothing trains, since training is not bit-identical across CPUs and thread counts: the bundles
are stored, and (d) takes the frozen-blocks accuracy from ``--fa-frozen-acc``. The eval data is
MNIST-1D generated from the seed the bundles record (numpy's seeded legacy generator, the same
samples on every machine), and the device is the CPU.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"

# The forward and backward passes run in float32; another CPU's kernels, BLAS or thread count
# sum in another order and move the numbers at ~1e-6 relative (on a 2-core Xeon: one, two and
# three torch threads gave the same numbers; torch's portable kernels, ATEN_CPU_CAPABILITY=default,
# instead of AVX-512 moved them by at most 1.4e-6 relative, 1.2e-9 absolute near 0). 1e-3 leaves
# room for that and still catches a change of a definition. Values near 0 (Γ_l, (c)'s stability,
# the null band, a spread of 0) carry an absolute float error, hence the floor. Accuracies are
# counts: no test sample's two largest logits lie closer than 1.2e-4 (3.4e-5 with one block
# removed or reset to its initial weights, the per-block drops), against logits moved by at
# most 3e-6, so no prediction flips (one would move an accuracy by 1/1200 and fail here).
REL = 1e-3
ABS = 1e-5

# What depends on the machine, the time or the release is left out of the comparison: the
# package version (the JSON's top-level "pytest_fa", the Markdown title's "(pytest-fa X)").
# The reports hold no timestamp, duration or thread count, and no path: the checkpoints are
# named relative to their folder.
MACHINE_FIELDS = ("pytest_fa",)
VERSION_IN_TITLE = re.compile(r"\(pytest-fa [^)]*\)")

NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _golden_tool():
    spec = importlib.util.spec_from_file_location("golden", ROOT / "tools" / "golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _close(old: float, new: float) -> bool:
    return abs(old - new) <= max(REL * max(abs(old), abs(new)), ABS)


def _last_digit(text: str) -> float:
    """The value of one unit in the last digit printed: 0.01 for ``-5.67``, 1e-07 for ``1e-07``."""
    mantissa, _, exponent = text.lower().partition("e")
    return 10.0 ** (int(exponent or 0) - len(mantissa.partition(".")[2]))


def _same_text(old: str, new: str) -> bool:
    """Identical text around the numbers; a printed number may move by one unit of its last
    digit (a float32 difference across a rounding boundary), else within the tolerance."""
    if NUMBER.split(old) != NUMBER.split(new):
        return False
    return all(
        abs(float(a) - float(b)) <= 1.001 * max(_last_digit(a), _last_digit(b)) or _close(float(a), float(b))
        for a, b in zip(NUMBER.findall(old), NUMBER.findall(new))
    )


def differences(old, new, where: str = ""):
    """Each place where ``new`` departs from ``old``: keys, lengths, types, booleans, integers
    and strings identical (numbers in strings as ``_same_text``), floats as ``_close``."""
    if isinstance(old, dict) and isinstance(new, dict):
        if list(old) != list(new):
            yield f"{where or 'top level'}: keys {list(old)} became {list(new)}"
            return
        for key in old:
            yield from differences(old[key], new[key], f"{where}.{key}")
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            yield f"{where}: {len(old)} entries became {len(new)}"
            return
        for index, (a, b) in enumerate(zip(old, new)):
            yield from differences(a, b, f"{where}[{index}]")
    elif isinstance(old, float) and type(new) is float:
        if not (_close(old, new) or (math.isnan(old) and math.isnan(new))):
            yield f"{where}: {old!r} became {new!r} (tolerance {REL} relative, {ABS} absolute)"
    elif isinstance(old, str) and isinstance(new, str):
        if not _same_text(old, new):
            yield f"{where}: {old!r} became {new!r}"
    elif type(old) is not type(new) or old != new:
        yield f"{where}: {old!r} became {new!r}"


def _comparable(result: dict) -> dict:
    """``result`` less the Markdown (compared line by line) and the ``MACHINE_FIELDS``."""
    report = {k: v for k, v in result["report"].items() if k not in MACHINE_FIELDS}
    return {**{k: v for k, v in result.items() if k != "markdown"}, "report": report}


@pytest.fixture(params=[1, 2], ids=lambda n: f"{n}-threads")
def torch_threads(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(threads)


def test_the_main_jobs_protocol_gives_the_stored_reports(torch_threads, tmp_path):
    result = _golden_tool().run(tmp_path)
    stored = json.loads((GOLDEN / "golden.json").read_text(encoding="utf-8"))
    found = list(differences(_comparable(stored), _comparable(result)))
    assert not found, "the golden run changed (run tools/golden.py only for an intended change):\n" + "\n".join(found)

    old_md = VERSION_IN_TITLE.sub("", (GOLDEN / "report.md").read_text(encoding="utf-8")).splitlines()
    new_md = VERSION_IN_TITLE.sub("", result["markdown"]).splitlines()
    found = list(differences(old_md, new_md, "report.md lines"))
    assert not found, "the golden run's Markdown report changed:\n" + "\n".join(found)
