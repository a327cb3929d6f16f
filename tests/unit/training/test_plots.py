"""Figures of the model directory are written whole: a failed write leaves the previous picture and no temporary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from lineguard.training.plots import plot_confusion, plot_curves, plot_pr

HISTORY = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.2 / e, "val_accuracy": 0.5, "val_macro_f1": 0.4,
            "val_auroc": None} for e in (1, 2)]
PNG = b"\x89PNG\r\n\x1a\n"


def _draw(kind: str, path: Path) -> None:
    if kind == "curves":
        plot_curves(HISTORY, path)
    elif kind == "confusion":
        plot_confusion([[3, 1], [0, 4]], ["ok", "ng"], path, "test split")
    else:
        probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
        plot_pr(probs, np.array([0, 1, 0, 1]), ["ok", "ng"], "ok", path)


@pytest.mark.parametrize("kind", ["curves", "confusion", "pr"])
def test_failed_plot_keeps_the_old_file(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / f"{kind}.png"
    _draw(kind, path)
    before = path.read_bytes()
    assert before.startswith(PNG)

    def dies_halfway(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(PNG)  # the start of a picture, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        _draw(kind, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
