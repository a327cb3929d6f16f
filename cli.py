"""The ``lineguard`` command: one verb per job (Ultralytics style), loaded only when it runs.

    lineguard data import SRC --out DIR       lineguard data simulate --n 2000 --out DIR
    lineguard synth fit --data DIR --out GAN   lineguard synth generate --gan GAN --data DIR --n 100000 --out DIR
    lineguard train --data DIR --out MODEL     lineguard export --model MODEL --format onnx
    lineguard eval --model MODEL --data DIR    lineguard bench --model MODEL --backend ort --batch 1

:data:`VERBS` is the one table of verbs: each names the function that implements it ("module:function") and its
one-line help. ``lineguard --help`` and a group's ``--help`` are printed from the table, and a verb's module is
imported only when that verb runs, so the line computer (no torch, no training or synthesis code) runs its
verbs (``data``, ``eval``/``bench`` with ONNX Runtime or TensorRT, later ``inspect``) without the development side.
Torch-free, Python 3.8.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from typing import Dict, List, Optional, Tuple, Union

import typer

from . import LineguardError
from .console import console, err_console, shown

__all__ = ["VERBS", "main"]

Verb = Tuple[str, str]  # ("module:function", one-line help)
Group = Tuple[Dict[str, Verb], str]  # (verbs, one-line help)

VERBS: Dict[str, Union[Verb, Group]] = {
    "data": ({
        "import": ("lineguard.data.cli:import_", "Import a data set; unusable files are listed with reasons."),
        "validate": ("lineguard.data.cli:validate", "Decode every image and mask and check them against the manifest."),
        "split": ("lineguard.data.cli:split", "Stratified, seeded train/val/test split."),
        "stats": ("lineguard.data.cli:stats", "Counts by class, split and source; image sizes; pixel statistics."),
        "preview": ("lineguard.data.cli:preview", "Contact sheets per class with the defect masks drawn in red."),
        "simulate": ("lineguard.sim.cli:simulate", "Render simulated line parts with masks (the default data set)."),
    }, "Data sets: import, validate, split, stats, preview, simulate."),
    "synth": ({
        "fit": ("lineguard.synth.gan.cli:fit", "Train the class-conditional defect GAN on a data set's defects."),
        "generate": ("lineguard.synth.cli:generate", "Composite synthetic defects onto OK images into a data set."),
        "score": ("lineguard.training.cli:synth_score", "How close a synthetic set is to the real one (FD, KID, ...)."),
        "filter": ("lineguard.training.cli:synth_filter", "Keep the synthetic images a real-trained model accepts."),
    }, "Defect synthesis: fit the GAN, generate, score, filter."),
    "train": ("lineguard.training.cli:train", "Train a model folder (DDP under torchrun)."),
    "cv": ("lineguard.training.cli:cv", "k-fold cross-validation: per-fold models, mean +- std of every figure."),
    "eval": ("lineguard.edge.cli:evaluate", "Accuracy, escape and false-reject rates, heatmap IoU of a model."),
    "export": ("lineguard.edge.cli:export", "Export a model folder: onnx, onnx-int8, engine."),
    "bench": ("lineguard.edge.cli:bench", "Latency and throughput per model, backend and batch size."),
    "inspect": ({
        "run": ("lineguard.inspect.cli:run", "Inspect the line: camera loop, decisions, reject signal, results."),
        "config": ("lineguard.inspect.cli:config", "Print a commented example line config, or check one."),
        "bench": ("lineguard.inspect.cli:bench", "The whole loop on the virtual camera against the bare runner."),
        "status": ("lineguard.inspect.cli:status", "Totals by decision, reason and class from the results database."),
    }, "The line: run the inspection daemon, check its config, benchmark it, look at its results."),
    "sync": ("lineguard.inspect.cli:sync", "Push a line's results into the plant's PostgreSQL database."),
    "report": ("lineguard.inspect.cli:report", "QA report of a period (HTML, PDF): yield, p-chart, Pareto, trace."),
}


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point; always exits. Errors in the input or the environment (unreadable files, a full disk, a
    missing extra) print one clear line (no traceback) and exit with 2; usage errors exit with 2 and say what
    is wrong; an interrupt exits with 130."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        words, target = _resolve(args)
        app = _app(" ".join(words), target)
        app(args=args[len(words):], prog_name=" ".join(["lineguard", *words]))
    except LineguardError as e:
        _fail(str(e), 2)
    except OSError as e:  # the file system said no (permissions, a full disk, a vanished file)
        where = f"{e.filename}: " if e.filename else ""
        _fail(f"{where}{e.strerror or e}", 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _resolve(args: List[str]) -> Tuple[List[str], str]:
    """The verb words at the start of ``args`` and their "module:function"; a group's or the top level's help
    (asked for, or no verb given) is printed from :data:`VERBS` and exits."""
    table: Dict[str, Union[Verb, Group]] = VERBS
    words: List[str] = []
    text = "Visual defect inspection for factory lines."
    while True:
        word = args[len(words)] if len(words) < len(args) else None
        if word is None or word in ("--help", "-h"):
            _help(words, table, text)
            sys.exit(0 if word else 2)
        if word not in table:
            close = difflib.get_close_matches(word, list(table), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise LineguardError(f"'{' '.join(['lineguard', *words, word])}': no such verb{hint} "
                                 f"(verbs: {', '.join(table)})")
        words.append(word)
        target, text = table[word]
        if isinstance(target, str):
            return words, target
        table = target


def _app(name: str, target: str) -> typer.Typer:
    """A one-verb typer app of the function ``target`` ("module:function"), imported now."""
    module, func = target.split(":")
    try:
        fn = getattr(importlib.import_module(module), func)
    except ImportError as e:  # a development verb on a machine without the development extras
        raise LineguardError(f"lineguard {name} needs what this installation lacks ({e}); install the "
                             "development extras: pip install 'lineguard[train]'") from None
    app = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    app.command(name)(fn)
    return app


def _help(words: List[str], table: Dict[str, Union[Verb, Group]], text: str) -> None:
    console.print(f"Usage: lineguard {' '.join(words) + ' ' if words else ''}VERB [OPTIONS]\n\n{text}\n")
    width = max(len(w) for w in table)
    for verb, (_, line) in table.items():
        console.print(f"  {verb.ljust(width)}  {line}", highlight=False)
    console.print(f"\n`lineguard {' '.join(words) + ' ' if words else ''}VERB --help` for a verb's options.")


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {shown(message)}", highlight=False)
    sys.exit(code)
