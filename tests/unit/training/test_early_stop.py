"""Early stopping that a saturated val metric cannot fool: ties on macro-F1 are broken by val loss, no early stop
before a share of the planned epochs, and the reason is given."""

from __future__ import annotations

from typing import List, Optional, Tuple

from lineguard.training.config import TrainConfig
from lineguard.training.engine import TrainState


def _run(cfg: TrainConfig, figures: List[Tuple[float, float]], seconds_per_epoch: float = 60.0,
         planned: Optional[int] = None) -> TrainState:
    """Epochs with these (val macro-F1, val loss) until the state says stop."""
    state = TrainState(history=[], planned_epochs=planned)
    for f1, loss in figures:
        state.epoch += 1
        state.seconds += seconds_per_epoch
        state.observe(f1, loss)
        state.stop_reason = state.why_stop(cfg)
        if state.stop_reason:
            break
    return state


def test_a_saturated_macro_f1_with_a_falling_val_loss_keeps_training() -> None:
    cfg = TrainConfig(epochs=30, patience=3, min_train_share=0.0)
    # macro-F1 is 1.0 (38 val images all right) from epoch 2 on; the val loss keeps falling until epoch 20
    figures = [(0.9, 0.50)] + [(1.0, 0.40 - 0.01 * e) for e in range(19)] + [(1.0, 0.30)] * 10
    state = _run(cfg, figures)
    assert state.best_epoch == 20 and state.best_f1 == 1.0 and state.best_loss == 0.40 - 0.01 * 18
    assert state.epoch == 23  # 3 epochs without a gain after the loss stopped falling
    assert state.stop_reason == ("early stop after 23/30 epochs: no val gain (macro-F1, then val loss) for 3 epochs "
                                 "since epoch 20")
    # were the metric alone judged, the same run would have stopped at epoch 5
    assert _run(cfg, [(0.9, 0.5)] + [(1.0, 0.5)] * 29).epoch == 5


def test_no_early_stop_before_the_minimum_share_of_the_planned_epochs() -> None:
    flat = [(1.0, 0.2)] * 30  # a plateau from the first epoch
    state = _run(TrainConfig(epochs=30, patience=3, min_train_share=0.5), flat)
    assert state.epoch == 15 and state.best_epoch == 1 and state.stop_reason.startswith("early stop after 15/30")
    # with a time budget the planned epochs are the ones that fit it: 14 minutes of 1-minute epochs
    state = _run(TrainConfig(epochs=30, patience=3, min_train_share=0.5, max_minutes=14), flat, planned=14)
    assert state.epoch == 7 and state.stop_reason.startswith("early stop after 7/14")


def test_the_time_budget_ends_a_run_that_still_improves() -> None:
    improving = [(0.5 + 0.01 * e, 1.0 - 0.01 * e) for e in range(30)]
    state = _run(TrainConfig(epochs=30, max_minutes=10), improving, planned=10)
    assert state.epoch == 10 and state.best_epoch == 10
    assert state.stop_reason == "time budget of 10 min spent after 10/10 epochs"
    assert _run(TrainConfig(epochs=30), improving).stop_reason is None  # the loop ends it: all epochs run
