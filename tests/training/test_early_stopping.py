import pytest

from training.early_stopping import EarlyStopping


def test_stops_after_patience_evaluations_without_gain():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(0.1) and not stopper.should_stop
    assert not stopper.update(0.1)  # equal is no gain
    assert not stopper.should_stop
    assert stopper.update(0.2) and stopper.evals_without_gain == 0
    assert not stopper.update(0.15) and not stopper.update(0.19)
    assert stopper.should_stop and stopper.best_score == 0.2


def test_a_later_phase_must_beat_the_earlier_best():
    stopper = EarlyStopping(patience=3, best_score=0.5)
    assert not stopper.update(0.4)
    assert stopper.best is None
    assert stopper.update(0.6)
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
