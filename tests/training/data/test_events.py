"""Parquet / CSV event logs (training/data/readers/events.py): what RecBole atomic files of
the same data give, read in batches, with the clear errors of the other readers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from training.cli import app
from training.data.preprocess import PreprocessConfig, preprocess
from training.data.readers import EventColumns, load_raw_dataset, read_events, read_recbole_atomic
from training.data.schema import DataFormatError
from training.data.synthetic import SyntheticConfig, generate_synthetic

pytest.importorskip("pyarrow")

# An export with its own column names, as catalogs send them.
MAPPING = EventColumns(user="uid", item="sku", timestamp="ts", text=("name",), category="cat")
FLAGS = ["--user-column", "uid", "--item-column", "sku", "--time-column", "ts"]
FLAGS += ["--text-columns", "name", "--category-column", "cat"]


@pytest.fixture(scope="module")
def raw():
    return generate_synthetic(SyntheticConfig(n_items=120, n_interactions=2400, seed=3))


def _export(raw, directory, fmt: str):
    """events.<fmt> and items.<fmt> in the export's column names."""
    events = raw.interactions.rename(
        columns={"user_id": "uid", "item_id": "sku", "timestamp": "ts"}
    )
    events = events.assign(uid="u" + events["uid"].astype(str), rating=4.0)
    items = raw.items[["item_id", "title", "categories"]].rename(
        columns={"item_id": "sku", "title": "name", "categories": "cat"}
    )
    paths = directory / f"events.{fmt}", directory / f"items.{fmt}"
    for frame, path in zip((events, items), paths, strict=True):
        if fmt == "parquet":
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
    return paths


def _recbole(raw, directory):
    """The same data as RecBole atomic files."""
    directory.mkdir()
    inter = raw.interactions.assign(user_id="u" + raw.interactions["user_id"].astype(str))
    inter.rename(
        columns={
            "user_id": "user_id:token",
            "item_id": "item_id:token",
            "timestamp": "timestamp:float",
        }
    ).to_csv(directory / "mine.inter", sep="\t", index=False)
    raw.items[["item_id", "title", "categories"]].rename(
        columns={
            "item_id": "item_id:token",
            "title": "title:token_seq",
            "categories": "categories:token",
        }
    ).to_csv(directory / "mine.item", sep="\t", index=False)
    return directory / "mine.inter"


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_an_event_log_reads_as_its_recbole_files_do(raw, tmp_path, fmt):
    events, items = _export(raw, tmp_path, fmt)
    # Small batches: ids are encoded across many of them.
    ours = read_events(events, MAPPING, items, batch_rows=97)
    theirs = read_recbole_atomic(_recbole(raw, tmp_path / "recbole"))
    pd.testing.assert_frame_equal(
        ours.interactions.astype({"user_id": str, "item_id": str}),
        theirs.interactions.astype({"user_id": str, "item_id": str}),
    )
    pd.testing.assert_frame_equal(ours.items, theirs.items)
    config = PreprocessConfig(cold_item_fraction=0.05)
    a, b = preprocess(ours, config), preprocess(theirs, config)
    np.testing.assert_array_equal(a.item_ids, b.item_ids)
    np.testing.assert_array_equal(a.user_ids, b.user_ids)
    np.testing.assert_array_equal(a.sequences.offsets, b.sequences.offsets)
    np.testing.assert_array_equal(a.sequences.items, b.sequences.items)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    np.testing.assert_array_equal(a.cold_holdout, b.cold_holdout)
    pd.testing.assert_frame_equal(a.items, b.items)


def test_item_text_from_the_events_and_joined_columns(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "user,item,when,name,blurb,kind\n"
        "a,i1,2024-01-02T00:00:00Z,Red mug,,kitchen\n"
        "b,i2,2024-01-01T00:00:00Z,Lamp,Warm light,home\n"
        "a,i1,2024-01-03T00:00:00Z,ignored,ignored,ignored\n"
    )
    columns = EventColumns("user", "item", "when", text=("name", "blurb"), category="kind")
    data = read_events(path, columns)
    assert data.name == "log"
    assert data.interactions["timestamp"].tolist() == [1704153600, 1704067200, 1704240000]
    assert data.interactions["item_id"].astype(str).tolist() == ["i1", "i2", "i1"]
    assert data.items.to_dict("list") == {
        "item_id": ["i1", "i2"],
        "title": ["Red mug", "Lamp. Warm light"],  # the first event's text per item
        "categories": ["kitchen", "home"],
    }
    # The mapping is part of the cache key: another mapping is another dataset.
    other = read_events(path, EventColumns("user", "item", "when"))
    assert other.fingerprint != data.fingerprint and list(other.items.columns) == ["item_id"]


def test_parquet_timestamp_columns_and_integer_ids(tmp_path):
    path = tmp_path / "log.parquet"
    pd.DataFrame(
        {
            "user_id": [7, 8],
            "item_id": [70, 80],
            "timestamp": pd.to_datetime(["1970-01-01 00:00:10", "2024-01-01 00:00:00"], utc=True),
        }
    ).to_parquet(path)
    data = read_events(path)
    assert data.interactions["timestamp"].tolist() == [10, 1704067200]
    assert data.interactions["user_id"].astype(str).tolist() == ["7", "8"]


def _error(path, columns=None, items=None) -> str:
    with pytest.raises(DataFormatError) as info:
        read_events(path, columns, items)
    return str(info.value)


def test_errors_say_what_is_wrong_and_where(tmp_path):
    assert "file not found" in _error(tmp_path / "none.parquet")
    csv = tmp_path / "log.csv"
    csv.write_text("uid,item_id,timestamp\nu,i,1\n")
    message = _error(csv)
    assert "no column(s) ['user_id']" in message and "['uid', 'item_id', 'timestamp']" in message
    assert "--user-column" in message
    csv.write_text("user_id,item_id,timestamp\n")
    assert "no interactions" in _error(csv)
    csv.write_text("")
    assert "file is empty" in _error(csv)
    csv.write_text("user_id,item_id,timestamp\nu,i,1\nv,j,yesterday\n")
    message = _error(csv)
    assert "unparsable timestamp 'yesterday'" in message and "data row 2" in message
    csv.write_text("user_id,item_id,timestamp\nu,i,1\n,j,2\n")
    assert "empty 'user_id' at data row 2" in _error(csv)
    parquet = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": pd.Series([], dtype=str), "item_id": [], "timestamp": []}).to_parquet(
        parquet
    )
    assert "no interactions" in _error(parquet)
    parquet.write_text("not parquet")
    assert "not a readable Parquet file" in _error(parquet)
    good = tmp_path / "good.csv"
    good.write_text("user_id,item_id,timestamp\nu,i,1\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\ni,Mug\n")
    message = _error(good, EventColumns(text=("name",)), items)
    assert str(items) in message and "no column(s) ['name']" in message


def test_dispatch_and_the_item_table_flag(tmp_path):
    good = tmp_path / "good.tsv"
    good.write_text("user_id\titem_id\ttimestamp\nu\ti\t1\n")
    assert len(load_raw_dataset(str(good)).interactions) == 1
    with pytest.raises(ValueError, match="goes with a Parquet or CSV event log"):
        load_raw_dataset("ml-100k", item_table=tmp_path / "items.csv")


def test_the_cli_and_a_recipe_name_the_columns(raw, tmp_path):
    events, items = _export(raw, tmp_path, "parquet")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    args = ["data", "-d", str(events), "--item-table", str(items), *FLAGS, *cache]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{") :])
    assert summary["dataset"] == "events" and summary["items"] > 0
    recipe = tmp_path / "events.toml"
    recipe.write_text(
        f'[data]\ndataset = "{events}"\nitem_table = "{items}"\nuser_column = "uid"\n'
        'item_column = "sku"\ntime_column = "ts"\ntext_columns = "name"\ncategory_column = "cat"\n'
    )
    again = CliRunner().invoke(app, ["data", "--config", str(recipe), *cache])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output[again.output.index("{") :]) == summary
    wrong = CliRunner().invoke(app, ["data", "-d", str(events), *cache])
    assert (
        wrong.exit_code == 2 and "no column(s) ['user_id', 'item_id', 'timestamp']" in wrong.output
    )
