"""The decision rule on hand-made probabilities, defect boxes on a hand-made heatmap, verdicts as JSON,
policy overrides and refused policy values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import yaml

from lineguard.data.format import DatasetError
from lineguard.data.modelspec import SPEC_FILE, ModelSpec
from lineguard.data.preprocess import Preprocess
from lineguard.edge.runners.base import Scores
from lineguard.edge.verdict import (
    DECISIONS,
    Decision,
    DecisionPolicy,
    Frame,
    Verdict,
    VerdictError,
    decide,
    decide_batch,
    find_boxes,
)

CLASSES = ["crack", "ok", "stain"]


def _spec(**kw: object) -> ModelSpec:
    return ModelSpec(arch={"name": "cnn_lite0"}, classes=CLASSES, ok_class="ok",
                     preprocess=Preprocess(size=(32, 32)), **kw)


def _probs(ng: list, stain_share: float = 0.5) -> np.ndarray:
    """Rows with 1 - p(ok) = ``ng``, split between crack and stain (stain gets ``stain_share``)."""
    ng = np.asarray(ng, np.float64)
    return np.stack([ng * (1 - stain_share), 1 - ng, ng * stain_share], 1).astype(np.float32)


def _decisions(probs: np.ndarray, spec: ModelSpec, policy: Optional[DecisionPolicy] = None) -> list:
    return [DECISIONS[c].value for c in decide_batch(probs, spec, policy)]


def test_band_zero_is_ng_score_at_or_above_threshold() -> None:
    spec = _spec(threshold=0.5)
    ng = [0.0, 0.25, 0.4999, 0.5, 0.5001, 1.0]
    probs = _probs(ng)
    codes = decide_batch(probs, spec)
    assert codes.dtype == np.int8
    assert [DECISIONS[c] is Decision.NG for c in codes] == list(1.0 - probs[:, 1] >= 0.5)
    assert _decisions(probs, spec) == ["OK", "OK", "OK", "NG", "NG", "NG"]


def test_uncertain_band() -> None:
    spec = _spec(threshold=0.5, uncertain_band=0.1)
    probs = _probs([0.39, 0.41, 0.5, 0.59, 0.61, 1.0])
    assert _decisions(probs, spec) == ["OK", "UNCERTAIN", "UNCERTAIN", "UNCERTAIN", "NG", "NG"]


def test_class_thresholds_make_ng_below_the_threshold() -> None:
    spec = _spec(threshold=0.5, uncertain_band=0.1, class_thresholds={"stain": 0.2})
    probs = _probs([0.3, 0.3, 0.45], stain_share=0.7)  # stain 0.21, 0.21, 0.315
    probs[1] = [0.11, 0.7, 0.19]  # stain just below its threshold: OK by the score
    assert _decisions(probs, spec) == ["NG", "OK", "NG"]
    loose = DecisionPolicy.of(spec, class_thresholds={"crack": 0.99})
    assert _decisions(probs, spec, loose) == ["OK", "OK", "UNCERTAIN"]


def test_policy_of_keeps_the_model_and_overrides() -> None:
    spec = _spec(threshold=0.3, uncertain_band=0.05, class_thresholds={"crack": 0.9})
    p = DecisionPolicy.of(spec)
    assert (p.threshold, p.uncertain_band, p.class_thresholds, p.box_threshold) == (0.3, 0.05, {"crack": 0.9}, 0.5)
    q = DecisionPolicy.of(spec, threshold=0.7, uncertain_band=None, min_box_area=12)
    assert (q.threshold, q.uncertain_band, q.min_box_area) == (0.7, 0.05, 12)


@pytest.mark.parametrize("override, message", [
    ({"uncertain_band": -0.1}, "uncertain_band must be a finite number >= 0, got -0.1"),
    ({"uncertain_band": float("nan")}, "uncertain_band must be a finite number >= 0"),
    ({"threshold": 1.5}, "threshold must be in 0..1, got 1.5"),
    ({"class_thresholds": {"stain": 2.0}}, "class_thresholds must be in 0..1"),
    ({"class_thresholds": {"ok": 0.5}}, r"class_thresholds names \['ok'\], not defect classes"),
    ({"class_thresholds": {"dent": 0.5}}, r"class_thresholds names \['dent'\]"),
    ({"box_threshold": 0.0 - 1}, "box_threshold must be in 0..1"),
    ({"min_box_area": -1}, "min_box_area must be >= 0 px"),
    ({"box_thresold": 0.4}, "unknown key 'box_thresold' \\(did you mean 'box_threshold'\\?\\)"),
])
def test_bad_policy_values_are_refused(override: dict, message: str) -> None:
    with pytest.raises(VerdictError, match=message) as e:
        DecisionPolicy.of(_spec(), **override)
    assert str(e.value).startswith("decision policy: ") and "\n" not in str(e.value)


def test_model_yaml_decision_settings(tmp_path: Path) -> None:
    spec = _spec(uncertain_band=0.05, class_thresholds={"stain": 0.4})
    spec.save(tmp_path)
    assert ModelSpec.load(tmp_path).class_thresholds == {"stain": 0.4}
    old = yaml.safe_load((tmp_path / SPEC_FILE).read_text())
    del old["uncertain_band"], old["class_thresholds"]  # a model.yaml written before these existed
    (tmp_path / SPEC_FILE).write_text(yaml.safe_dump(old))
    loaded = ModelSpec.load(tmp_path)
    assert loaded.uncertain_band == 0.0 and loaded.class_thresholds == {}
    for bad, message in (({"uncertain_band": -1}, "uncertain_band must be"),
                         ({"class_thresholds": {"ok": 0.5}}, r"class_thresholds names \['ok'\]")):
        (tmp_path / SPEC_FILE).write_text(yaml.safe_dump({**old, **bad}))
        with pytest.raises(DatasetError, match=message) as e:
            ModelSpec.load(tmp_path)
        assert str(e.value).startswith(str(tmp_path / SPEC_FILE))


def test_boxes_are_scaled_to_the_frame_image() -> None:
    heat = np.zeros((4, 8), np.float32)
    heat[0, 0] = 0.9  # one cell at the corner
    heat[2:4, 5:8] = 0.6  # a 2 x 3 block...
    heat[3, 7] = 0.95  # ...with its peak
    heat[1, 3] = 0.49  # below the box threshold
    boxes = find_boxes(heat, (40, 100), DecisionPolicy(threshold=0.5))  # cells of 10 x 12.5 px
    assert [(b.x0, b.y0, b.x1, b.y1, b.area) for b in boxes] == [(62, 20, 100, 40, 750), (0, 0, 13, 10, 125)]
    assert [b.score for b in boxes] == pytest.approx([0.95, 0.9])
    assert len(find_boxes(heat, (40, 100), DecisionPolicy(threshold=0.5, min_box_area=126))) == 1
    assert find_boxes(heat, (40, 100), DecisionPolicy(threshold=0.5, box_threshold=0.96)) == []
    diag = np.zeros((3, 3), np.float32)
    diag[0, 0] = diag[1, 1] = 1.0  # diagonal neighbours: one region (8-connected)
    assert len(find_boxes(diag, (3, 3), DecisionPolicy(threshold=0.5))) == 1


def test_decide_gives_json_verdicts() -> None:
    spec = _spec(threshold=0.5, uncertain_band=0.1)
    probs = _probs([0.1, 0.5, 0.9], stain_share=0.8)
    heat = np.zeros((3, 1, 4, 4), np.float32)
    heat[2, 0, 1:3, 1:3] = 0.8
    scores = Scores(probs, 1.0 - probs[:, 1], heat)
    frames = [Frame(np.zeros((64, 48), np.uint8), frame_id=i, timestamp=1.7e9 + i, source_id="cam-1",
                    serial=f"S{i}" if i else None, lot="L7") for i in range(3)]
    verdicts = decide(frames, scores, spec, model_version="ab" * 32, timings={"infer_ms": 3.5})
    assert [v.decision for v in verdicts] == [Decision.OK, Decision.UNCERTAIN, Decision.NG]
    assert [v.top_class for v in verdicts] == ["ok", "stain", "stain"]
    last = verdicts[2]
    assert last.scores == pytest.approx({"crack": 0.18, "ok": 0.1, "stain": 0.72})
    assert last.ng_score == pytest.approx(0.9) and last.policy == DecisionPolicy.of(spec)
    assert [(b.x0, b.y0, b.x1, b.y1) for b in last.boxes] == [(12, 16, 36, 48)] and verdicts[0].boxes == []
    text = last.model_dump_json()
    assert json.loads(text)["decision"] == "NG" and json.loads(text)["policy"]["uncertain_band"] == 0.1
    assert Verdict.model_validate_json(text) == last
    assert (verdicts[0].serial, verdicts[1].serial, last.lot, last.timings) == (None, "S1", "L7", {"infer_ms": 3.5})
    with pytest.raises(VerdictError, match="2 frames but scores for 3"):
        decide(frames[:2], scores, spec)
