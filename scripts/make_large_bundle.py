"""A large synthetic bundle for benchmarks: the shipped model shape, RANDOM weights.

    .venv/bin/python scripts/make_large_bundle.py --items 100000 --out bundles/large-100k

Only timings and sizes measured on it mean anything. The shape is what `flexcode train
pipeline` ships, read from the training defaults rather than copied: the tokenizer of
`TokenizerSpec()` (K = suggest_codebook_size(N) codes per level, L_max levels) over
MiniLM's text and SASRec's CF embedding widths; the shipped variant's budget L and the
stage-D dedup slack; the default generator, reading text. The catalogue:

  - codes drawn uniformly per level: a trained RQ-VAE spreads an item table over its
    codebooks, and so the dedup block stays as small as a real one (a few ids plus the
    slack), where codes from an untrained tokenizer would crowd a few prefixes;
  - long-tailed popularity (log-normal counts), a fifth of the items cold; a cold item's
    CF codes are a random warm item's (an export copies its nearest one in the aligned
    space; with random weights any choice is as arbitrary, and a search over a 1M
    catalogue would dominate the build);
  - one of LARGE_CATEGORIES categories per item, uniformly ("cat-00" .. "cat-19": each
    about 5% of the catalogue), for the business-rule filters (scripts/bench_filters.py);
  - served tokens with dedup ids by popularity and item vectors from the served path
    (`served_item_features` + `Generator.item_vectors`) on random unit text vectors,
    computed in chunks so a 1M-item catalogue fits in a few GB.

Everything then goes through `models.bundle.assemble_contents` and `write_bundle`, as an
export does (ONNX graphs exported and checked against torch). New items' text for such a
bundle goes through `HashTextEncoder` (POST /items in scripts/bench_service.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from models.bundle import BundleContents, assemble_contents, write_bundle  # noqa: E402
from models.cold_start import served_item_features  # noqa: E402
from models.decoding import DecodingConfig  # noqa: E402
from models.dual_tokenizer import DualTokenizer  # noqa: E402
from models.generator import Generator  # noqa: E402
from models.router import Router, RouterConfig  # noqa: E402
from models.sasrec import SASRecConfig  # noqa: E402
from models.text_encoder import EMBEDDING_DIM  # noqa: E402
from training.stages.generator import SHIPPED, VARIANTS, GeneratorTrainConfig  # noqa: E402
from training.stages.generator.inputs import ItemInputs, layout_for  # noqa: E402
from training.stages.generator.runner import default_generator_config  # noqa: E402
from training.stages.tokenizer import TokenizerSpec, build_config  # noqa: E402

TEXT_MODEL_ID = f"hash-text-encoder;dim={EMBEDDING_DIM}"  # `HashTextEncoder`'s id
LARGE_CATEGORIES = 20  # categories of the random catalogue, ~5% of the items each
COLD_SHARE = 0.2  # items without a training interaction
VECTOR_CHUNK = 65_536  # item rows per item-vector batch: ~100 MB of text at a time
# Random inputs per code the tokenizer's codebooks are k-means initialised from: enough
# to spread new items' codes, few enough that the k-means takes seconds.
SAMPLES_PER_CODE = 2


class HashTextEncoder:
    """A stand-in for MiniLM: deterministic unit vectors from a hash of the text, in the
    large bundle's text space (sentence encoding is not what a serving benchmark times)."""

    def __init__(self, dim: int = EMBEDDING_DIM, model_id: str = TEXT_MODEL_ID) -> None:
        self.dim = dim
        self.model_id = model_id

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            seed = int.from_bytes(hashlib.sha256(str(text).encode()).digest()[:8], "little")
            vec = np.random.default_rng(seed).standard_normal(self.dim)
            out[i] = vec / np.linalg.norm(vec)
        return out


@dataclass(frozen=True)
class LargeBundleShape:
    """The shipped shape (module docstring); every field defaults to the training one."""

    text_dim: int = EMBEDDING_DIM  # MiniLM
    cf_dim: int = SASRecConfig(n_items=1).hidden  # stage A's item table width
    budget: int = VARIANTS[SHIPPED].budget  # L
    dedup_slack: int = GeneratorTrainConfig().dedup_slack
    dense_weight: float = 1.0  # what stage D chose on ML-100K validation (BENCHMARKS.md)


def _unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _random_tokenizer(shape: LargeBundleShape, n_items: int, seed: int) -> DualTokenizer:
    """The shipped tokenizer's architecture with random weights, its standardisation and
    codebooks set from random inputs so that new items' codes spread over the codebooks."""
    config = build_config(TokenizerSpec(), shape.text_dim, shape.cf_dim, n_items)
    tokenizer = DualTokenizer(config).eval()
    rng = np.random.default_rng(seed + 1)
    n = SAMPLES_PER_CODE * config.sem.codebook_size
    sem_x = torch.as_tensor(_unit_rows(rng, n, shape.text_dim))
    cf_x = torch.as_tensor(rng.standard_normal((n, shape.cf_dim), dtype=np.float32))
    with torch.no_grad():
        tokenizer.fit_standardisation(sem_x, cf_x)
        tokenizer.init_codebooks(sem_x, cf_x, generator=torch.Generator().manual_seed(seed))
    return tokenizer


def _popularity(rng: np.random.Generator, rows: int) -> np.ndarray:
    """(N + 1,) long-tailed training counts, COLD_SHARE of them 0; row 0 = padding."""
    counts = np.ceil(rng.lognormal(mean=1.0, sigma=1.5, size=rows)).astype(np.int64)
    counts[rng.random(rows) < COLD_SHARE] = 0
    counts[0] = 0
    counts[1] = max(counts[1], 1)  # at least one warm item: the imputation index needs it
    return counts


def _item_vectors(
    generator: Generator,
    router: Router,
    inputs: ItemInputs,
    alpha: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(N + 1, C) served item vectors on random unit text, VECTOR_CHUNK rows at a time."""
    rows, ids = inputs.n_rows, inputs.ids()
    out = np.zeros((rows, generator.config.hidden), dtype=np.float32)
    for lo in range(0, rows, VECTOR_CHUNK):
        hi = min(lo + VECTOR_CHUNK, rows)
        features = served_item_features(
            router,
            inputs.layout,
            inputs.budget,
            ids[lo:hi],
            inputs.cf_codes[lo:hi],
            inputs.sem_codes[lo:hi],
            alpha[lo:hi],
            _unit_rows(rng, hi - lo, generator.config.text_dim),
            "cpu",
            padding_row=lo == 0,
        )
        with torch.no_grad():
            out[lo:hi] = generator.item_vectors(features).numpy()
    return out


@dataclass
class LargeCatalogue:
    """The random catalogue's codes, popularity, router split and served tokens, before
    any model is run on it (what the index and token-table sizes depend on)."""

    tokenizer: DualTokenizer
    router: Router
    inputs: ItemInputs
    alpha: np.ndarray  # (N + 1,) the router's CF weight per row
    n_cf: np.ndarray  # (N + 1,) CF tokens per row
    rng: np.random.Generator  # the catalogue's generator, to draw the rest from in order

    @property
    def item_tokens(self) -> np.ndarray:
        """(N + 1, L + 1) served tokens, row 0 padding."""
        return self.inputs.item_tokens(self.n_cf)


def large_catalogue(
    n_items: int, seed: int = 0, shape: LargeBundleShape | None = None
) -> LargeCatalogue:
    """The random catalogue of the shipped code shape (module docstring), no model run."""
    shape = shape or LargeBundleShape()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    rows = n_items + 1
    tokenizer = _random_tokenizer(shape, n_items, seed)
    codebook_size = tokenizer.config.sem.codebook_size
    levels = tokenizer.config.sem.n_levels
    sem_codes = rng.integers(0, codebook_size, (rows, levels), dtype=np.int64)
    cf_codes = rng.integers(0, codebook_size, (rows, levels), dtype=np.int64)
    sem_codes[0] = cf_codes[0] = 0
    popularity = _popularity(rng, rows)
    warm = popularity > 0
    warm_ids = np.flatnonzero(warm)
    cold_ids = np.flatnonzero(~warm)[1:]
    cf_codes[cold_ids] = cf_codes[rng.choice(warm_ids, size=cold_ids.size)]

    layout = layout_for(sem_codes[1:], cf_codes[1:], shape.budget, codebook_size, shape.dedup_slack)
    inputs = ItemInputs(cf_codes, sem_codes, popularity, warm, layout, shape.budget)
    router = Router(RouterConfig(budget=shape.budget)).init_slope(popularity).eval()
    with torch.no_grad():
        alpha = router(torch.as_tensor(popularity)).numpy().astype(np.float32)
        n_cf = router.hard_split(torch.as_tensor(alpha)).numpy()
    n_cf[0] = 0
    return LargeCatalogue(tokenizer, router, inputs, alpha, n_cf, rng)


def large_contents(
    n_items: int, seed: int = 0, shape: LargeBundleShape | None = None
) -> BundleContents:
    """BundleContents of n_items random items and random modules of the shipped shape."""
    shape = shape or LargeBundleShape()
    cat = large_catalogue(n_items, seed, shape)
    inputs, rng, rows = cat.inputs, cat.rng, n_items + 1
    generator_config = replace(  # as stage D sizes it for a catalogue (train_generator)
        default_generator_config(),
        vocab_size=inputs.layout.vocab_size,
        budget=shape.budget,
        n_ids=rows,
        code_levels=shape.budget,
        text_dim=shape.text_dim,
    )
    generator = Generator(generator_config).eval()
    train = GeneratorTrainConfig()
    return assemble_contents(
        tokenizer=cat.tokenizer,
        router=cat.router,
        generator=generator,
        layout=inputs.layout,
        decoding=DecodingConfig(
            beam_width=train.beam_width,
            dense_weight=shape.dense_weight,
            dense_candidates=train.dense_candidates,
        ),
        external_ids=np.array([""] + [f"item-{i}" for i in range(1, rows)]),
        sem_codes=inputs.sem_codes,
        cf_codes=inputs.cf_codes,
        item_tokens=cat.item_tokens,
        n_cf=cat.n_cf,
        alpha=cat.alpha,
        popularity=inputs.counts,
        item_vectors=_item_vectors(generator, cat.router, inputs, cat.alpha, rng),
        warm=inputs.warm,
        text_model_id=TEXT_MODEL_ID,
        dataset={"name": f"large-{n_items}", "fingerprint": f"random-seed{seed}"},
        categories=[""] + [f"cat-{c:02d}" for c in rng.integers(0, LARGE_CATEGORIES, n_items)],
    )


def make_large_bundle(
    bundle_root: Path, n_items: int, seed: int = 0, shape: LargeBundleShape | None = None
) -> Path:
    """Write a large random bundle under bundle_root (LATEST points at it); returns its
    directory. Deterministic content for given arguments."""
    return write_bundle(Path(bundle_root), large_contents(n_items, seed, shape))


def _size_on_disk(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, required=True, help="catalogue size N")
    parser.add_argument("--out", type=Path, required=True, help="bundle root to write to")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dense-weight", type=float, default=LargeBundleShape.dense_weight, help="w"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    shape = LargeBundleShape(dense_weight=args.dense_weight)

    started = time.perf_counter()
    contents = large_contents(args.items, args.seed, shape)
    built = time.perf_counter()
    bundle = write_bundle(args.out, contents)
    done = time.perf_counter()
    report = {
        "bundle": str(bundle),
        "items": args.items,
        "codebook_size": contents.layout.codebook_size,
        "budget": contents.budget,
        "dedup_size": contents.layout.dedup_size,
        "vocab_size": contents.layout.vocab_size,
        "generator_parameters": sum(p.numel() for p in contents.generator.parameters()),
        "build_s": round(built - started, 1),
        "write_s": round(done - built, 1),  # ONNX export and check, prefix index, files
        "total_s": round(done - started, 1),
        "size_on_disk_mb": round(_size_on_disk(bundle) / 2**20, 1),
        "files_mb": {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(bundle.iterdir())},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
