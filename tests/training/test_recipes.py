"""Recipe files (`--config`, training/recipe.py): the shipped recipes load and cannot
drift from the library's defaults; bad files are refused with messages that say what to
fix; flags given on the command line win over the file."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from typer.testing import CliRunner

from training.cli import app
from training.cli_options import recipe_schema
from training.recipe import read_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _defaults(config: type) -> dict:
    return {f.name: f.default for f in fields(config)}


def test_the_ml_100k_recipe_is_the_library_defaults():
    schema = recipe_schema()
    recipe = read_recipe(RECIPES / "ml-100k.toml", schema)
    assert set(recipe.sections) == set(schema)  # every section documented
    for name, values in recipe.sections.items():
        defaults = _defaults(schema[name].config)
        for key, value in values.items():
            assert value == defaults[key], (
                f"recipes/ml-100k.toml [{name}] {key} = {value!r}, but "
                f"{schema[name].config.__name__}.{key} defaults to {defaults[key]!r}: "
                "change both or neither"
            )


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_validates(path):
    recipe = read_recipe(path, recipe_schema())
    assert recipe.sections["data"]["dataset"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sasrc]\nhidden = 8\n", r"unknown section\(s\) \['sasrc'\]; valid sections: data, "),
        ("[sasrec]\nhiden = 8\n", r"\[sasrec\]: SASRecConfig: unknown keys \['hiden'\]; valid"),
        ("[data]\ncold_frac = 0.1\n", r"unknown keys \['cold_frac'\]; valid keys: dataset, "),
        ("[sasrec]\nn_items = 8\n", r"\['n_items'\] are set by the run"),
        ("[sasrec_train]\nlr = 'fast'\n", r"\[sasrec_train\] lr must be float, got 'fast'"),
        ("[sasrec_train]\nmax_epochs = 2.5\n", r"max_epochs must be int"),
        ("[generator_train]\nuse_text = 1\n", r"use_text must be bool"),
        ("[sasrec_train]\nlr = 0\n", r"SASRecTrainConfig.lr must be a number > 0"),
        ("[tokenizer]\nhidden_dims = [8, 0]\n", r"hidden_dims must be positive ints"),
        ("sasrec = 3\n", r"\[sasrec\]: expected a table"),
        ("[sasrec\n", r"is not valid TOML"),
    ],
)
def test_bad_recipes_are_refused_with_what_to_fix(tmp_path, text, message):
    path = tmp_path / "recipe.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_recipe(path, recipe_schema())


def test_values_take_their_fields_types(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(
        "[data]\ncache_dir = 'x/cache'\n[generator_train]\nlr = 1\ndense_weights = [0, 1]\n"
    )
    recipe = read_recipe(path, recipe_schema())
    assert recipe.values("data") == {"cache_dir": Path("x/cache")}
    assert recipe.values("generator_train") == {"lr": 1.0, "dense_weights": (0.0, 1.0)}
    assert isinstance(recipe.values("generator_train")["lr"], float)
    assert recipe.values("sasrec") == {}


def _summary(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{") :])


def test_data_options_come_from_the_recipe_and_flags_win(tmp_path):
    cache = ["--cache-dir", str(tmp_path / "cache")]
    smoke = ["--config", str(RECIPES / "smoke.toml")]
    runner = CliRunner()
    from_file = _summary(runner.invoke(app, ["data", *smoke, *cache]))
    assert from_file["dataset"] == "synthetic-300"  # the recipe's catalog size
    flag = _summary(runner.invoke(app, ["data", *smoke, *cache, "--synthetic-items", "250"]))
    assert flag["dataset"] == "synthetic-250"


def test_missing_or_bad_recipe_ends_the_command_clearly(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train", "pipeline", "--config", str(tmp_path / "no.toml")])
    assert result.exit_code == 2 and "not found" in result.output
    bad = tmp_path / "bad.toml"
    bad.write_text("[sasrec_train]\nmax_epoch = 3\n")
    result = runner.invoke(app, ["train", "pipeline", "--config", str(bad)])
    assert result.exit_code == 2
    assert "unknown keys ['max_epoch']" in result.output and "max_epochs" in result.output


def test_pipeline_takes_stage_settings_from_the_recipe_under_its_flags(tmp_path, monkeypatch):
    """What `train pipeline` hands the stages: file values, flags over them, defaults for
    the rest (run_pipeline itself is replaced: no training here)."""
    import training.pipeline

    seen = {}

    def fake_run_pipeline(dataset, run_dir, bundle_root, device, variant, train_config, **kw):
        seen.update(kw, generator=train_config, n_items=dataset.n_items)
        return bundle_root / "v1"

    monkeypatch.setattr(training.pipeline, "run_pipeline", fake_run_pipeline)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(
        (RECIPES / "smoke.toml").read_text()
        + "\n[sasrec]\nhidden = 32\ndropout = 0.3\n[tokenizer]\nlatent_dim = 16\n"
    )
    args = ["train", "pipeline", "--config", str(recipe), "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(
        app, [*args, "--device", "cpu", "--generator-max-epochs", "7", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    assert seen["n_items"] > 0 and seen["cache_dir"] == tmp_path / "c"
    assert seen["sasrec_config"].hidden == 32 and seen["sasrec_config"].dropout == 0.3
    assert seen["sasrec_config"].n_items == seen["n_items"]
    assert seen["tokenizer_spec"].latent_dim == 16
    assert seen["sasrec_train_config"].max_epochs == 2  # the file's
    assert seen["tokenizer_train_config"].epochs == 5  # the file's
    assert seen["generator"].max_epochs == 7  # the flag over the file's 2
    assert {seen[k].seed for k in ("generator", "sasrec_train_config")} == {3}
    assert seen["generator"].patience == 10 and seen["generator"].eval_users == 5000  # defaults
