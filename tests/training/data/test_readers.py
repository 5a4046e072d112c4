"""Readers: RecBole atomic files, Amazon review dumps, MovieLens-100K and the dispatcher."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

import pandas as pd
import pytest

from training.data.readers import (
    load_raw_dataset,
    read_amazon,
    read_amazon_dir,
    read_movielens_100k,
    read_recbole_atomic,
)
from training.data.schema import DataFormatError

INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_bytes(text.encode("utf-8"))
    return path


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def interactions(raw) -> list[tuple]:
    frame = raw.interactions
    assert list(frame.columns) == ["user_id", "item_id", "timestamp"]
    assert frame["timestamp"].dtype == "int64"
    return list(frame.itertuples(index=False, name=None))


# ----------------------------------------------------------------------------- RecBole


@pytest.fixture
def recbole_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "shop"
    write(
        directory / "shop.inter",
        INTER_HEADER + "u1\t007\t5\t100\nu2\ti1\t3\t90.7\nu1\ti1\t\t100\n",
    )
    write(
        directory / "shop.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float\n"
        "i1\tThe Title\t1999\tAction  Comedy\t3.5\n"
        "007\t\t\t\t\n",
    )
    return directory


def test_recbole_directory_reads_interactions_in_row_order_and_item_text(recbole_dir: Path):
    raw = read_recbole_atomic(recbole_dir)
    assert raw.name == "shop"
    assert interactions(raw) == [("u1", "007", 100), ("u2", "i1", 90), ("u1", "i1", 100)]
    assert raw.items.to_dict("records") == [
        {"item_id": "i1", "title": "The Title", "year": "1999", "categories": "Action, Comedy"},
        {"item_id": "007", "title": "", "year": "", "categories": ""},
    ]
    assert len(raw.fingerprint) == 16


def test_recbole_inter_file_path_without_item_file(tmp_path: Path):
    inter = write(tmp_path / "data" / "x.inter", INTER_HEADER + "a\tb\t1\t5\n")
    raw = read_recbole_atomic(inter)
    assert raw.name == "x"
    assert interactions(raw) == [("a", "b", 5)]
    assert list(raw.items.columns) == ["item_id"] and raw.items.empty


def test_recbole_untyped_reordered_header_crlf_and_blank_lines(tmp_path: Path):
    text = "timestamp\tcomment:token_seq\titem_id\tuser_id\r\n"
    text += "7\thi there\t1\t2\r\n\r\n8\t\t3\t4\r\n"
    raw = read_recbole_atomic(write(tmp_path / "d.inter", text))
    assert interactions(raw) == [("2", "1", 7), ("4", "3", 8)]


def test_recbole_iso_dates_become_epoch_seconds(tmp_path: Path):
    text = "user_id:token\titem_id:token\ttimestamp:token\n"
    text += "u\ta\t1970-01-02\nu\tb\t2020-01-01T00:00:01Z\nu\tc\t1970-01-01T01:00:00+01:00\n"
    raw = read_recbole_atomic(write(tmp_path / "d.inter", text))
    assert [t for *_, t in interactions(raw)] == [86400, 1577836801, 0]


def test_recbole_item_field_aliases_first_one_wins(tmp_path: Path):
    write(tmp_path / "d.inter", INTER_HEADER + "u\ti\t1\t1\n")
    write(
        tmp_path / "d.item",
        "item_id:token\tname:token_seq\ttitle:token_seq\tcategories:token\tbrand:token\t"
        "desc:token_seq\n"
        "i\tFirst\tSecond\tHome Decor\tAcme\t Nice thing \n",
    )
    raw = read_recbole_atomic(tmp_path / "d.inter")
    assert raw.items.to_dict("records") == [
        {
            "item_id": "i",
            "title": "First",
            "categories": "Home Decor",  # a plain token is not split
            "brand": "Acme",
            "description": "Nice thing",
        }
    ]


def test_recbole_missing_column_names_file_and_column(tmp_path: Path):
    path = write(tmp_path / "d.inter", "user_id:token\titem_id:token\trating:float\nu\ti\t1\n")
    with pytest.raises(DataFormatError) as info:
        read_recbole_atomic(path)
    message = str(info.value)
    assert "d.inter" in message and "'timestamp'" in message and "rating" in message


def test_recbole_bad_timestamp_names_line_and_value(tmp_path: Path):
    path = write(tmp_path / "d.inter", INTER_HEADER + "u\ti\t1\t5\n\nu\tj\t1\tsoon\nu\tk\t1\t?\n")
    with pytest.raises(DataFormatError) as info:
        read_recbole_atomic(path)
    assert info.value.line == 4
    assert "d.inter, line 4" in str(info.value) and "'soon'" in str(info.value)


@pytest.mark.parametrize("value", ["", "nan", "1e400", "2020-13-01"])
def test_recbole_other_bad_timestamps(tmp_path: Path, value: str):
    text = f"user_id:token\titem_id:token\ttimestamp:float\nu\ti\t5\nu\tj\t{value}\n"
    with pytest.raises(DataFormatError, match=r"d\.inter, line 3: unparsable timestamp"):
        read_recbole_atomic(write(tmp_path / "d.inter", text))


def test_recbole_wrong_field_count_names_line(tmp_path: Path):
    for row in ("u\ti\t1\t5\textra\n", "u\ti\t5\n"):
        path = write(tmp_path / "d.inter", INTER_HEADER + "u\ti\t1\t5\n" + row)
        with pytest.raises(DataFormatError, match=r"d\.inter, line 3: expected 4"):
            read_recbole_atomic(path)


@pytest.mark.parametrize("content", ["", "\n\n", INTER_HEADER])
def test_recbole_empty_file(tmp_path: Path, content: str):
    path = write(tmp_path / "d.inter", content)
    with pytest.raises(DataFormatError, match=r"d\.inter"):
        read_recbole_atomic(path)


def test_recbole_empty_user_id_names_line(tmp_path: Path):
    path = write(tmp_path / "d.inter", INTER_HEADER + "u\ti\t1\t5\n\ti\t1\t5\n")
    with pytest.raises(DataFormatError, match=r"line 3: empty user_id"):
        read_recbole_atomic(path)


def test_recbole_missing_paths(tmp_path: Path):
    with pytest.raises(DataFormatError, match="not found"):
        read_recbole_atomic(tmp_path / "nope.inter")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"no \.inter file"):
        read_recbole_atomic(tmp_path / "empty")
    write(tmp_path / "two" / "a.inter", INTER_HEADER)
    write(tmp_path / "two" / "b.inter", INTER_HEADER)
    with pytest.raises(DataFormatError, match=r"several \.inter files"):
        read_recbole_atomic(tmp_path / "two")


def test_fingerprint_follows_file_bytes(recbole_dir: Path):
    first = read_recbole_atomic(recbole_dir).fingerprint
    assert read_recbole_atomic(recbole_dir).fingerprint == first
    item = recbole_dir / "shop.item"
    item.write_text(item.read_text().replace("The Title", "Another"))
    assert read_recbole_atomic(recbole_dir).fingerprint != first


# ----------------------------------------------------------------------------- Amazon

REVIEWS = [
    {"reviewerID": "A2", "asin": "B1", "unixReviewTime": 1300, "overall": 5.0, "summary": "x"},
    {"reviewerID": "A1", "asin": "B2", "unixReviewTime": 1200},
    {"reviewerID": "A2", "asin": "B2", "unixReviewTime": "1100"},
]
META_2014 = (
    "{'asin': 'B1', 'title': \"Men's Soap\", 'categories': [['Beauty', 'Bath'], "
    "['Beauty', 'Soap']], 'brand': 'Acme', 'description': 'Clean.', "
    "'related': {'also_bought': ['B2']}, 'price': 3.5}\n"
    "{'asin': 'B2', 'categories': [[]]}\n"
)
META_2018 = jsonl(
    {
        "asin": "B2",
        "title": "Brush",
        "category": ["Sports", "Outdoors", "Sports"],
        "brand": "Zed",
        "description": ["Strong.", "", "Light."],
    },
    {"asin": "B1", "title": "Ball", "category": []},
)


def test_amazon_reviews_with_2014_python_literal_meta(tmp_path: Path):
    raw = read_amazon(
        write(tmp_path / "reviews_Beauty_5.json", jsonl(*REVIEWS)),
        write(tmp_path / "meta_Beauty.json", META_2014),
    )
    assert raw.name == "Beauty_5"
    assert interactions(raw) == [("A2", "B1", 1300), ("A1", "B2", 1200), ("A2", "B2", 1100)]
    assert raw.items.to_dict("records") == [
        {
            "item_id": "B1",
            "title": "Men's Soap",
            "categories": "Beauty, Bath, Soap",
            "brand": "Acme",
            "description": "Clean.",
        },
        {"item_id": "B2", "title": "", "categories": "", "brand": "", "description": ""},
    ]


def test_amazon_gzipped_files_with_2018_json_meta(tmp_path: Path):
    raw = read_amazon(
        write(tmp_path / "Sports_5.json.gz", jsonl(*REVIEWS)),
        write(tmp_path / "meta_Sports.json.gz", META_2018),
    )
    assert raw.name == "Sports_5"
    assert interactions(raw) == [("A2", "B1", 1300), ("A1", "B2", 1200), ("A2", "B2", 1100)]
    assert raw.items.to_dict("records") == [
        {
            "item_id": "B2",
            "title": "Brush",
            "categories": "Sports, Outdoors",
            "brand": "Zed",
            "description": "Strong. Light.",
        },
        {"item_id": "B1", "title": "Ball", "categories": "", "brand": "", "description": ""},
    ]


def test_amazon_without_meta_has_empty_item_table(tmp_path: Path):
    raw = read_amazon(write(tmp_path / "r.jsonl", jsonl(*REVIEWS)))
    assert len(raw.interactions) == 3
    assert list(raw.items.columns) == ["item_id"] and raw.items.empty


@pytest.mark.parametrize(
    ("second_line", "expected"),
    [
        ('{"reviewerID": "A", "asin": "B", unixReviewTime: 1}', "invalid JSON"),
        ('{"reviewerID": "A", "unixReviewTime": 1}', "lacks the key 'asin'"),
        ('{"reviewerID": "A", "asin": "B"}', "lacks the key 'unixReviewTime'"),
        ('{"reviewerID": "A", "asin": "B", "unixReviewTime": "May 2"}', "must be an integer"),
        ('{"reviewerID": "A", "asin": "B", "unixReviewTime": 1.5}', "must be an integer"),
        ('{"reviewerID": "", "asin": "B", "unixReviewTime": 1}', "reviewerID must be"),
        ('["not", "an", "object"]', "expected an object"),
    ],
)
def test_amazon_review_errors_name_file_and_line(tmp_path: Path, second_line: str, expected: str):
    path = write(tmp_path / "reviews.json.gz", jsonl(REVIEWS[0]) + second_line + "\n")
    with pytest.raises(DataFormatError) as info:
        read_amazon(path)
    assert "reviews.json.gz, line 2" in str(info.value)
    assert expected in str(info.value)


def test_amazon_meta_missing_asin_and_empty_files(tmp_path: Path):
    reviews = write(tmp_path / "reviews.json", jsonl(*REVIEWS))
    meta = write(tmp_path / "meta.json", "\n{'title': 'x'}\n")
    with pytest.raises(DataFormatError, match=r"meta\.json, line 2: .*'asin'"):
        read_amazon(reviews, meta)
    with pytest.raises(DataFormatError, match="empty"):
        read_amazon(write(tmp_path / "empty.json", ""))
    with pytest.raises(DataFormatError, match="not found"):
        read_amazon(tmp_path / "missing.json")


def test_amazon_dir_picks_reviews_and_meta(tmp_path: Path):
    write(tmp_path / "reviews_Beauty_5.json.gz", jsonl(*REVIEWS))
    write(tmp_path / "meta_Beauty.json", META_2014)
    write(tmp_path / "notes.txt", "ignored")
    raw = read_amazon_dir(tmp_path)
    assert raw.name == "Beauty_5"
    assert len(raw.interactions) == 3 and list(raw.items["item_id"]) == ["B1", "B2"]
    write(tmp_path / "meta_Other.json", META_2018)
    with pytest.raises(DataFormatError, match="at most one meta file"):
        read_amazon_dir(tmp_path)


def test_amazon_dir_ambiguous_reviews(tmp_path: Path):
    write(tmp_path / "reviews_A_5.json", jsonl(*REVIEWS))
    write(tmp_path / "reviews_B_5.json", jsonl(*REVIEWS))
    with pytest.raises(DataFormatError, match="exactly one reviews file"):
        read_amazon_dir(tmp_path)


# ----------------------------------------------------------------------------- MovieLens

needs_recbole = pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="recbole==1.2.1 is not installed"
)


@needs_recbole
def test_movielens_100k_from_installed_recbole():
    raw = read_movielens_100k()
    inter = raw.interactions
    assert raw.name == "ml-100k"
    assert len(inter) == 100_000
    assert inter["user_id"].nunique() == 943 and inter["item_id"].nunique() == 1682
    assert interactions(raw)[0] == ("196", "242", 881250949)
    assert len(raw.items) == 1682
    toy = raw.items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story" and toy["year"] == "1995"
    assert "Animation" in toy["categories"].split(", ")


def test_movielens_without_recbole_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps recbole==1\.2\.1"):
        read_movielens_100k()


# ----------------------------------------------------------------------------- dispatch


@needs_recbole
def test_load_raw_dataset_ml_100k():
    assert load_raw_dataset("ml-100k").name == "ml-100k"


def test_load_raw_dataset_dispatches_paths(recbole_dir: Path, tmp_path: Path):
    assert load_raw_dataset(str(recbole_dir)).name == "shop"
    assert load_raw_dataset(str(recbole_dir / "shop.inter")).name == "shop"
    amazon = tmp_path / "amazon"
    reviews = write(amazon / "reviews_Toys_5.json.gz", jsonl(*REVIEWS))
    write(amazon / "meta_Toys.json", META_2014)
    from_dir = load_raw_dataset(str(amazon))
    assert from_dir.name == "Toys_5" and len(from_dir.items) == 2
    from_file = load_raw_dataset(str(reviews))
    assert len(from_file.interactions) == 3 and from_file.items.empty
    assert from_file.fingerprint != from_dir.fingerprint


# (.csv is an event log now: tests/training/data/test_events.py)
@pytest.mark.parametrize("spec", ["movielens", "no/such/path.inter", "{tmp}", "{tmp}/x.txt"])
def test_load_raw_dataset_rejects_unknown_specs(tmp_path: Path, spec: str):
    write(tmp_path / "x.txt", "a,b\n")
    with pytest.raises(ValueError, match=r"Accepted forms: 'ml-100k'.*\.inter.*\.json"):
        load_raw_dataset(spec.format(tmp=tmp_path))


def test_item_ids_match_interactions_as_strings(recbole_dir: Path):
    raw = read_recbole_atomic(recbole_dir)
    merged = raw.interactions.merge(raw.items, on="item_id", how="left")
    assert merged["title"].isna().sum() == 0
    assert isinstance(pd.Series(raw.interactions["item_id"]).iloc[0], str)
