"""The shared loop's weight averaging (`LoopConfig.ema_epochs`)."""

import numpy as np
import pytest
import torch

from training.loop import LoopConfig, WeightAverage, fit


def test_average_is_a_running_mean_then_a_moving_average():
    param = torch.nn.Parameter(torch.zeros(2))
    average = WeightAverage([param], steps_per_horizon=4)  # decay 0.75
    for value in (1.0, 2.0, 3.0):  # steps 1-3: weights 1, 1/2, 1/3 -> the plain mean
        param.data.fill_(value)
        average.update()
    torch.testing.assert_close(average.average[0], torch.full((2,), 2.0))
    for value in (4.0, 8.0):  # steps 4-5: weight max(1/4, 1/t) = 1/4
        param.data.fill_(value)
        average.update()
    want = 2.0 + 0.25 * (4.0 - 2.0)
    want = want + 0.25 * (8.0 - want)
    torch.testing.assert_close(average.average[0], torch.full((2,), want))


def test_applied_swaps_the_average_in_and_restores_the_raw_weights():
    param = torch.nn.Parameter(torch.tensor([1.0]))
    average = WeightAverage([param], steps_per_horizon=1)
    param.data.fill_(5.0)  # not averaged yet: the average still holds 1.0
    with average.applied():
        assert param.item() == 1.0
    assert param.item() == 5.0
    with pytest.raises(RuntimeError), average.applied():
        raise RuntimeError("validation failed")
    assert param.item() == 5.0  # restored on an error too


class _MeanTarget(torch.nn.Module):
    """A one-parameter 'model' whose summed loss pulls the weight toward each target."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))

    def forward(self, seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        del seq
        real = targets[targets != 0].float()
        return ((self.weight - real) ** 2).sum()


def _train(ema_epochs: float) -> tuple[list[float], float, dict]:
    """(weights validation saw, the raw weight after training, the kept snapshot)."""
    rng = np.random.default_rng(0)
    targets = rng.integers(1, 50, size=(64, 4))
    step = _MeanTarget()
    seen: list[float] = []

    def validate():
        seen.append(float(step.weight.detach()))
        return {"all": {"ndcg@10": -len(seen)}}  # only the first evaluation is "best"

    result = fit(
        step,
        (np.ones_like(targets), targets),
        LoopConfig(batch_size=8, max_epochs=3, patience=5, lr=0.5, ema_epochs=ema_epochs),
        validate,
        snapshot=lambda: {"weight": float(step.weight.detach())},
        device=torch.device("cpu"),
        desc="toy",
        progress=False,
    )
    return seen, float(step.weight.detach()), result.best


def test_validation_and_the_snapshot_read_the_averaged_weights():
    plain_seen, plain_raw, plain_best = _train(0.0)
    seen, raw, best = _train(2.0)
    # Same seed, same batches: the raw trajectories are the same with or without the
    # average, and training ends on the raw weights.
    assert raw == pytest.approx(plain_raw)
    # What validation scored is what the snapshot keeps; with averaging on, that is the
    # average, not the raw weights the optimizer reached.
    assert plain_best["weight"] == plain_seen[0]
    assert best["weight"] == seen[0]
    assert seen[0] != pytest.approx(plain_seen[0])
