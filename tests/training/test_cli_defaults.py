"""The CLI's defaults are the config dataclasses' defaults.

The dataset options take theirs from PreprocessConfig and SyntheticConfig; the stage
options are literals, because their configs live in modules that import torch, which
`flexcode --help` should not wait for. This test keeps those literals from drifting.
"""

from __future__ import annotations

from dataclasses import fields

import pytest
import typer

from models.sasrec import SASRecConfig
from training.cli import app
from training.data import EventColumns, PreprocessConfig, SyntheticConfig
from training.pipeline import DEFAULT_TEST_USERS
from training.stages.generator import GeneratorTrainConfig
from training.stages.sasrec import SASRecTrainConfig
from training.stages.tokenizer import TokenizerSpec, TokenizerTrainConfig

DATASET_OPTIONS = {
    "k_core": (PreprocessConfig, "k_core"),
    "cold_fraction": (PreprocessConfig, "cold_item_fraction"),
    "synthetic_items": (SyntheticConfig, "n_items"),
    "synthetic_interactions": (SyntheticConfig, "n_interactions"),
    "synthetic_seed": (SyntheticConfig, "seed"),
    "user_column": (EventColumns, "user"),
    "item_column": (EventColumns, "item"),
    "time_column": (EventColumns, "timestamp"),
    "category_column": (EventColumns, "category"),
}

# command path -> {option: (config class, field)} for the options that fill a config field
STAGE_OPTIONS = {
    ("train", "sasrec"): {
        "seed": (SASRecTrainConfig, "seed"),
        "max_len": (SASRecConfig, "max_len"),
        "hidden": (SASRecConfig, "hidden"),
        "layers": (SASRecConfig, "n_layers"),
        "dropout": (SASRecConfig, "dropout"),
        "lr": (SASRecTrainConfig, "lr"),
        "max_epochs": (SASRecTrainConfig, "max_epochs"),
        "eval_users": (SASRecTrainConfig, "eval_users"),
    },
    ("train", "tokenizer"): {
        "seed": (TokenizerTrainConfig, "seed"),
        "levels": (TokenizerSpec, "n_levels"),
        "latent_dim": (TokenizerSpec, "latent_dim"),
        "lambda_cca": (TokenizerSpec, "lambda_cca"),
        "epochs": (TokenizerTrainConfig, "epochs"),
    },
    ("train", "generator"): {
        "seed": (GeneratorTrainConfig, "seed"),
        "max_epochs": (GeneratorTrainConfig, "max_epochs"),
        "patience": (GeneratorTrainConfig, "patience"),
        "eval_users": (GeneratorTrainConfig, "eval_users"),
    },
    ("train", "pipeline"): {
        "seed": (GeneratorTrainConfig, "seed"),
        "sasrec_max_epochs": (SASRecTrainConfig, "max_epochs"),
        "tokenizer_epochs": (TokenizerTrainConfig, "epochs"),
        "generator_max_epochs": (GeneratorTrainConfig, "max_epochs"),
    },
    ("benchmark",): {
        "sasrec_max_epochs": (SASRecTrainConfig, "max_epochs"),
        "sasrec_max_len": (SASRecConfig, "max_len"),
        "generator_eval_users": (GeneratorTrainConfig, "eval_users"),
    },
}


def _field_default(config: type, name: str) -> object:
    (field,) = (f for f in fields(config) if f.name == name)
    return field.default


def _commands(command=None, path=()):
    """(path, command) for every leaf command of the app."""
    command = command or typer.main.get_command(app)
    subcommands = getattr(command, "commands", {})
    if not subcommands:
        yield path, command
    for name, sub in subcommands.items():
        yield from _commands(sub, (*path, name))


def _defaults(command) -> dict[str, object]:
    return {p.name: p.default for p in command.params}


@pytest.mark.parametrize("path", sorted(STAGE_OPTIONS), ids=" ".join)
def test_stage_option_defaults_match_their_configs(path):
    commands = dict(_commands())
    defaults = _defaults(commands[path])
    for option, (config, name) in STAGE_OPTIONS[path].items():
        assert defaults[option] == _field_default(config, name), (
            f"`flexcode {' '.join(path)} --{option.replace('_', '-')}` defaults to "
            f"{defaults[option]!r}, {config.__name__}.{name} to {_field_default(config, name)!r}"
        )


@pytest.mark.parametrize("path", [("train", "generator"), ("train", "pipeline")], ids=" ".join)
def test_test_users_default_is_the_pipelines(path):
    assert _defaults(dict(_commands())[path])["test_users"] == DEFAULT_TEST_USERS


def test_dataset_option_defaults_match_their_configs():
    with_data = 0
    for path, command in _commands():
        defaults = _defaults(command)
        if "dataset" not in defaults:
            continue
        with_data += 1
        for option, (config, name) in DATASET_OPTIONS.items():
            if option in defaults:
                assert defaults[option] == _field_default(config, name), (path, option)
    assert with_data == 8  # data, evaluate, benchmark, tune sasrec, train x4
