"""Export a trained run as a serving bundle (`flexcode export RUN_DIR OUT_DIR`).

Reads the run directory the pipeline wrote:

    run.json          dataset name, fingerprint, item count
    tokenizer/        stage C (`training.stages.tokenizer.save_tokenizer`); the no-align
                      variant's stage D trained on "tokenizer-no-align" instead (read
                      from generator.json's "tokenizer_dir", else its "variant")
    generator/        stage D (`training.stages.generator.save_generator`)

checks that stage D's items agree with the tokenizer's codes, hands the modules and the
served item table to `models.bundle.assemble_contents` (which builds the cold-start
imputation index), writes the bundle with `models.bundle.write_bundle` (which exports the
generator to ONNX and checks it against torch: max abs difference <= 1e-4, else the
export is refused) and loads it back with full verification before returning.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from models.bundle import assemble_contents, load_bundle, write_bundle
from models.text_encoder import TextEncoderConfig, packaged_model_id
from training.data.preprocess import warm_mask

logger = logging.getLogger(__name__)


class ExportError(ValueError):
    """The run directory cannot be exported; the message says which artifact and why."""


def default_text_model_id() -> str:
    """The id `models.text_encoder.TextEncoder` reports for the packaged weights at the
    default settings, computed without loading the model."""
    try:
        return packaged_model_id(TextEncoderConfig())
    except importlib.metadata.PackageNotFoundError:
        return packaged_model_id(TextEncoderConfig(), version="unknown")


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ExportError(f"{path}: missing; {what}")
    return json.loads(path.read_text())


def _check_codes(name: str, stage_d: np.ndarray, stage_c: np.ndarray) -> None:
    """Rows 1..N of stage D's codes must be stage C's (row 0 is padding in both)."""
    if stage_d.shape != stage_c.shape or not np.array_equal(stage_d[1:], stage_c[1:]):
        raise ExportError(
            f"generator/items.npz {name} differ from the tokenizer's codes: stage D was "
            "trained on another tokenizer; retrain stage D on this run's tokenizer"
        )


def _tokenizer_dir_name(gen_meta: dict) -> str:
    """The tokenizer stage D trained on: generator.json's "tokenizer_dir" if it says,
    else its variant's (the no-align variant reads "tokenizer-no-align")."""
    from training.stages.generator import VARIANTS

    if gen_meta.get("tokenizer_dir"):
        return str(gen_meta["tokenizer_dir"])
    variant = VARIANTS.get(gen_meta.get("variant", "flexcode"))
    return variant.tokenizer_dir if variant is not None else "tokenizer"


def export_bundle(
    run_dir: Path,
    bundle_root: Path,
    device: torch.device | str = "cpu",
    generator_dir: Path | None = None,
) -> Path:
    """Export run_dir as a new bundle version under bundle_root; returns the bundle dir.

    generator_dir: stage D's output (default run_dir / "generator"). device: where the
    modules are loaded for the imputation vectors (the ONNX check always runs on CPU).
    ExportError for a missing or inconsistent artifact, OnnxExportError when ONNX and
    torch differ by more than 1e-4, BundleError when the written bundle does not verify.
    """
    from training.stages.generator import load_generator  # training internals stay here
    from training.stages.generator.train import served_model
    from training.stages.tokenizer import load_tokenizer

    start = time.perf_counter()
    run_dir = Path(run_dir)
    device = torch.device(device)
    generator_dir = Path(generator_dir) if generator_dir else run_dir / "generator"
    run_info = _read_json(run_dir / "run.json", "is this a run directory of `flexcode train`?")
    gen_meta = _read_json(
        generator_dir / "generator.json", "train stage D (router + generator) first"
    )
    tokenizer_dir = run_dir / _tokenizer_dir_name(gen_meta)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise ExportError(f"{tokenizer_dir}: no trained tokenizer; train stage C first")

    logger.info("export: loading %s and %s", tokenizer_dir, generator_dir)
    tokenizer, codes = load_tokenizer(tokenizer_dir, device)
    result = load_generator(generator_dir, device)
    with np.load(generator_dir / "items.npz", allow_pickle=False) as data:
        items = {k: data[k] for k in data.files}
    inputs, layout = result.inputs, result.layout

    n_items = int(run_info.get("items", len(items["external_ids"]) - 1))
    if len(items["external_ids"]) != n_items + 1:
        raise ExportError(
            f"{generator_dir / 'items.npz'} has {len(items['external_ids']) - 1} items, "
            f"run.json says {n_items}: the artifacts come from different datasets"
        )
    sem_codes = np.asarray(inputs.sem_codes, dtype=np.int64)
    cf_codes = np.asarray(inputs.cf_codes, dtype=np.int64)  # cold items already imputed
    warm = warm_mask(inputs.warm)
    _check_codes("sem_codes", sem_codes, np.asarray(codes["sem_codes"], dtype=np.int64))
    tok_warm = np.asarray(codes["warm"], dtype=bool)
    both = warm & tok_warm  # imputation replaced cold items' codes, warm ones must be equal
    if not np.array_equal(cf_codes[both], np.asarray(codes["cf_codes"])[both]):
        raise ExportError(
            "generator/items.npz cf_codes of warm items differ from the tokenizer's: stage D "
            "was trained on another tokenizer; retrain stage D on this run's tokenizer"
        )
    served = np.asarray(layout.item_tokens, dtype=np.int64)
    if not np.array_equal(served, inputs.item_tokens(layout.n_cf)):
        raise ExportError(
            f"{generator_dir / 'items.npz'}: item_tokens do not follow from the codes and "
            "n_cf under the saved layout; the stage-D artifacts are inconsistent, retrain it"
        )

    # The dense head's table exactly as stage D measured it: hard masks of each split.
    item_vectors = served_model(
        result.generator, result.router, inputs, layout, result.decoding, device
    ).catalogue.item_vectors

    metrics = {"valid": result.best_valid}
    for key in ("variant", "test", "test_dense_only", "test_generative_only", "alpha"):
        if key in gen_meta:
            metrics[key] = gen_meta[key]
    contents = assemble_contents(
        tokenizer=tokenizer,
        router=result.router,
        generator=result.generator,
        layout=inputs.layout,
        decoding=result.decoding,
        external_ids=items["external_ids"],
        sem_codes=sem_codes,
        cf_codes=cf_codes,
        item_tokens=served,
        n_cf=layout.n_cf,
        alpha=layout.alpha,
        popularity=inputs.counts,
        item_vectors=item_vectors.float().cpu().numpy(),
        warm=warm,
        text_model_id=str(
            run_info.get("text_model_id")
            or gen_meta.get("text_model_id")
            or default_text_model_id()
        ),
        dataset={
            "name": str(run_info.get("dataset", gen_meta.get("dataset", {}).get("name", "run"))),
            "fingerprint": str(run_info.get("fingerprint", "")),
            "n_items": n_items,
        },
        metrics=metrics,
        # Stage-D runs from before categories were saved export items without them.
        categories=items["categories"].tolist() if "categories" in items else None,
    )
    logger.info("export: ONNX generator, checked against torch")
    # write_bundle exports the ONNX graphs and refuses them (OnnxExportError) beyond
    # ONNX_TOLERANCE; the difference goes into the manifest's metrics.
    bundle_dir = write_bundle(Path(bundle_root), contents)
    bundle = load_bundle(bundle_dir, device="cpu", verify=True)  # what the service will do
    logger.info(
        "export: bundle %s (%d items, L=%d) verified in %.1f s: %s",
        bundle.manifest.version,
        bundle.n_items,
        bundle.budget,
        time.perf_counter() - start,
        bundle_dir,
    )
    return bundle_dir
