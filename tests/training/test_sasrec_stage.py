import numpy as np

from training.data.preprocess import Sequences
from training.loop import training_windows


def test_windows_cover_every_target_once():
    train = Sequences(np.array([0, 7, 9, 10]), np.arange(1, 11))
    inputs, targets = training_windows(train, max_len=3)
    # user 0: 6 pairs -> 2 windows; user 1: 1 pair -> 1; user 2: 0 pairs -> none
    assert inputs.shape == (3, 3)
    pairs = {(int(i), int(t)) for i, t in zip(inputs.ravel(), targets.ravel(), strict=True) if t}
    assert pairs == {(1, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7), (8, 9)}
    assert targets.tolist()[0] == [5, 6, 7]  # the most recent window first
    assert inputs.tolist()[2] == [0, 0, 8]  # left-padded
