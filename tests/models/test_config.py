"""models/config.py: one to_dict / from_dict and one wording of range errors for every
config dataclass."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pytest

from models.alignment import AlignmentConfig
from models.config import Config, check_range, from_dict
from models.decoding import DecodingConfig
from models.dual_tokenizer import DualTokenizerConfig
from models.generator import GeneratorConfig
from models.router import RouterConfig
from models.rqvae import RQVAEConfig
from models.sasrec import SASRecConfig
from models.tokens import TokenLayout
from training.data import PreprocessConfig, SyntheticConfig
from training.stages.generator import GeneratorTrainConfig
from training.stages.sasrec import SASRecTrainConfig
from training.stages.tokenizer import TokenizerSpec, TokenizerTrainConfig

CONFIGS = [
    RQVAEConfig(input_dim=64, hidden_dims=(32,)),
    AlignmentConfig(sem_dim=384, cf_dim=64),
    DualTokenizerConfig(
        sem=RQVAEConfig(input_dim=384),
        cf=RQVAEConfig(input_dim=64),
        alignment=AlignmentConfig(sem_dim=384, cf_dim=64),
    ),
    RouterConfig(fixed_alpha=0.5),
    GeneratorConfig(vocab_size=40, budget=3, n_ids=11, code_levels=3),
    SASRecConfig(n_items=10),
    DecodingConfig(new_item_share=0.2),
    TokenLayout(codebook_size=8, n_levels=3, dedup_size=4),
    SASRecTrainConfig(max_epochs=3),
    GeneratorTrainConfig(eval_users=None, dense_weights=(0.0, 1.0)),
    TokenizerSpec(codebook_size=16),
    TokenizerTrainConfig(epochs=2),
    PreprocessConfig(k_core=3),
    SyntheticConfig(n_items=100, n_interactions=2000),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_config_round_trips_through_json(config):
    # to_dict is asdict: what bundles and run directories have always stored.
    assert config.to_dict() == asdict(config)
    stored = json.loads(json.dumps(config.to_dict()))  # tuples come back as lists
    assert type(config).from_dict(stored) == config


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: type(c).__name__)
def test_unknown_keys_are_refused_with_the_valid_ones(config):
    data = config.to_dict() | {"nope": 1}
    with pytest.raises(ValueError, match=r"unknown keys \['nope'\]; valid keys: ") as info:
        type(config).from_dict(data)
    assert all(name in str(info.value) for name in config.to_dict())


def test_missing_required_keys_and_nested_unknown_keys():
    with pytest.raises(ValueError, match=r"missing keys \['cf_dim'\]"):
        AlignmentConfig.from_dict({"sem_dim": 4})
    tokenizer = CONFIGS[2].to_dict()
    tokenizer["sem"]["width"] = 3
    with pytest.raises(ValueError, match=r"RQVAEConfig: unknown keys \['width'\]"):
        DualTokenizerConfig.from_dict(tokenizer)
    with pytest.raises(ValueError, match="expected a mapping"):
        RouterConfig.from_dict([("budget", 3)])


def test_range_checks_word_their_errors_the_same_way():
    with pytest.raises(ValueError, match=r"RouterConfig.budget must be a positive int, got 0"):
        RouterConfig(budget=0)
    with pytest.raises(ValueError, match=r"RouterConfig.cold_alpha must be a number in \(0, 0.5\)"):
        RouterConfig(cold_alpha=0.5)
    with pytest.raises(ValueError, match=r"dense_weight must be a number in \[0, 1\]"):
        DecodingConfig(dense_weight=float("nan"))
    with pytest.raises(ValueError, match=r"must be a number in \(0, 1\) or None"):
        DecodingConfig(new_item_share=True)
    with pytest.raises(ValueError, match=r"SASRecTrainConfig.lr must be a number > 0"):
        SASRecTrainConfig(lr=0)
    with pytest.raises(ValueError, match=r"TokenizerSpec.hidden_dims must be positive ints"):
        TokenizerSpec(hidden_dims=(8, 0))
    with pytest.raises(ValueError, match=r"GeneratorTrainConfig.eval_users must be an int >= 1"):
        GeneratorTrainConfig(eval_users=0)
    with pytest.raises(ValueError, match=r"must be divisible by n_heads"):
        SASRecConfig(n_items=5, hidden=10, n_heads=3)


@dataclass(frozen=True)
class _Inner(Config):
    width: int = 2


@dataclass(frozen=True)
class _Outer(Config):
    inner: _Inner
    widths: tuple[int, ...] = (1,)
    optional: _Inner | None = None
    share: float = 0.5

    def __post_init__(self) -> None:
        check_range(self, "share", 0.0, 1.0, high_open=True, hint="(the share of X)")


def test_nested_dataclasses_tuples_and_optionals_are_rebuilt():
    outer = from_dict(
        _Outer, {"inner": {"width": 3}, "widths": [4, 5], "optional": {"width": 6}, "share": 0}
    )
    assert outer == _Outer(_Inner(3), (4, 5), _Inner(6), 0)
    assert _Outer.from_dict(outer.to_dict()) == outer
    with pytest.raises(ValueError, match=r"_Outer.share must be a number in \[0, 1\) \(the share"):
        _Outer(_Inner(), share=1.0)
