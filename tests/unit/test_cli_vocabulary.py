"""The CLI's one vocabulary (README: "Command-line vocabulary") holds for every verb of the table, and the
table loads no verb's module until that verb runs."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from typing import Dict, Iterator, Tuple

import click
import pytest
import typer
from typer.main import get_command

from lineguard.cli import VERBS

RETIRED = {"--base", "--real", "--batch-size", "-b"}  # the words of the old vocabulary


def _verbs(table: Dict = VERBS, words: Tuple[str, ...] = ()) -> Iterator[Tuple[str, str]]:
    for name, (target, _) in table.items():
        if isinstance(target, dict):
            yield from _verbs(target, (*words, name))
        else:
            yield " ".join((*words, name)), target


def _options(target: str) -> Dict[str, click.Parameter]:
    module, func = target.split(":")
    app = typer.Typer()
    app.command()(getattr(importlib.import_module(module), func))
    return {opt: p for p in get_command(app).params for opt in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize("verb, target", list(_verbs()))
def test_every_verb_speaks_the_vocabulary(verb: str, target: str) -> None:
    opts = _options(target)
    assert "--json" in opts and "--quiet" in opts and "-q" in opts, verb
    assert not RETIRED & set(opts), f"{verb}: {sorted(RETIRED & set(opts))}"
    for flag, short in (("--model", "-m"), ("--data", "-d"), ("--out", "-o")):
        if flag in opts:
            assert set(opts[flag].opts) == {flag, short}, verb
    assert ("--arch" in opts) == (verb in ("train", "cv")), verb  # the verbs that train take the train options
    if "--device" in opts:  # cpu | cuda[:N] | dla:N, as far as the verb's runtime has them
        assert "cuda" in (opts["--device"].help or ""), verb


def test_the_table_imports_no_verb_module() -> None:
    code = ("import json, sys, lineguard.cli\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('lineguard.'))))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(res.stdout)
    assert not [m for m in loaded if m.split(".")[1] in ("data", "sim", "synth", "training", "edge")], loaded
