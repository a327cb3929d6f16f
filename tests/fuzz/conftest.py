"""Fixtures of the fuzz suite (bad inputs for every importer, `data validate`, model folders and runners):
the shared model assets, the per-session result log, and the summary printed at the end of the run."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fuzz_harness (tests/ has no __init__.py)

RESULTS = pytest.StashKey[List[Dict[str, Any]]]()


@pytest.fixture(scope="session")
def fuzz_log(request: pytest.FixtureRequest) -> List[Dict[str, Any]]:
    return request.config.stash.setdefault(RESULTS, [])


@pytest.fixture(scope="session")
def fuzz_assets_factory(tmp_path_factory: pytest.TempPathFactory):
    """A callable that builds (once, on first use) the tiny model folder, its ONNX and a matching data set."""
    from fuzz_harness import Assets

    made: Dict[str, Any] = {}

    def get() -> Any:
        if "a" not in made:
            made["a"] = Assets(tmp_path_factory.mktemp("fuzz-assets"))
        return made["a"]

    return get


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    results = config.stash.get(RESULTS, None)
    if not results:
        return
    if os.environ.get("LINEGUARD_FUZZ_LOG"):  # every case's argv, exit code and failures, for triage
        Path(os.environ["LINEGUARD_FUZZ_LOG"]).write_text(json.dumps(results, indent=1, default=str))
    tr = terminalreporter
    failed = [r for r in results if r["failures"]]
    tr.section("lineguard fuzz summary")
    tr.write_line(f"fuzz: {len(results)} generated bad-input cases tried, {len(results) - len(failed)} passed, "
                  f"{len(failed)} failed")
    by_cat: Counter = Counter(r["category"] for r in results)
    bad_cat: Counter = Counter(r["category"] for r in failed)
    tr.write_line("by category (failed/tried): "
                  + ", ".join(f"{c} {bad_cat[c]}/{n}" for c, n in sorted(by_cat.items())))
    kinds: Counter = Counter(k for r in failed for k in dict.fromkeys(r["failures"]))
    if kinds:
        tr.write_line("failures by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.most_common()))
    causes: Counter = Counter(r["cause"] for r in failed if r.get("cause"))
    for cause, n in causes.most_common():
        example = next(r["id"] for r in failed if r.get("cause") == cause)
        tr.write_line(f"  {n:4d} x {cause}   e.g. {example}")
