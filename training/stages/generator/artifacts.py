"""Stage D's artifacts in a run directory: what `training.export` turns into a bundle.

generator.safetensors, router.safetensors   weights
generator.json   configs (generator, router, token layout, decoding), the train
                 config, the curve, best validation metrics (by dense weight), `extra`
items.npz        (N + 1)-row arrays, row 0 = padding: external_ids (str), item_tokens
                 (N + 1, L + 1), n_cf, alpha, cf_codes (cold ones imputed), sem_codes
                 (N + 1, L_max), popularity (training counts), warm (bool), text
                 (N + 1, D) when the generator reads text embeddings, and categories
                 (N + 1,) str, the dataset's categories column (comma-separated names;
                 the bundle's item categories, for filters)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from models.decoding import DecodingConfig
from models.generator import Generator, GeneratorConfig
from models.router import Router, RouterConfig
from models.tokens import TokenLayout
from training.data.preprocess import ProcessedDataset
from training.stages.generator.inputs import ItemInputs
from training.stages.generator.train import GeneratorResult, GeneratorTrainConfig, Layout


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def save_generator(
    result: GeneratorResult,
    dataset: ProcessedDataset,
    train_config: GeneratorTrainConfig,
    out_dir: Path,
    extra: dict | None = None,
) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_weights(result.generator), out_dir / "generator.safetensors")
    save_file(_weights(result.router), out_dir / "router.safetensors")
    inputs, layout = result.inputs, result.layout
    arrays = {
        "external_ids": np.asarray(dataset.item_ids, dtype=str),
        "item_tokens": layout.item_tokens,
        "n_cf": layout.n_cf,
        "alpha": layout.alpha,
        "cf_codes": inputs.cf_codes,
        "sem_codes": inputs.sem_codes,
        "popularity": inputs.counts,
        "warm": inputs.warm,
    }
    if inputs.text is not None:
        arrays["text"] = inputs.text
    if "categories" in dataset.items.columns:
        arrays["categories"] = dataset.items["categories"].fillna("").astype(str).to_numpy(str)
    np.savez(out_dir / "items.npz", **arrays)
    meta = {
        "dataset": {"name": dataset.name, "fingerprint": dataset.fingerprint},
        "generator_config": result.generator.config.to_dict(),
        "router_config": result.router.config.to_dict(),
        "layout": inputs.layout.to_dict(),
        "budget": inputs.budget,
        "decoding": {
            "beam_width": result.decoding.beam_width,
            "dense_candidates": result.decoding.dense_candidates,
            "dense_weight": result.decoding.dense_weight,
        },
        "train_config": train_config.to_dict(),
        "best_valid": result.best_valid,
        "valid_by_dense_weight": result.valid_by_weight,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "curve": result.curve,
        "train_seconds": result.seconds,
        "generative": result.generative,
        **(extra or {}),
    }
    (out_dir / "generator.json").write_text(json.dumps(meta, indent=2))


def load_generator(out_dir: Path, device: torch.device) -> GeneratorResult:
    """The GeneratorResult `save_generator` wrote (modules in eval mode on `device`)."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "generator.json").read_text())
    with np.load(out_dir / "items.npz", allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    generator = Generator(GeneratorConfig.from_dict(meta["generator_config"]))
    generator.load_state_dict(load_file(out_dir / "generator.safetensors"))
    router = Router(RouterConfig.from_dict(meta["router_config"]))
    router.load_state_dict(load_file(out_dir / "router.safetensors"))
    inputs = ItemInputs(
        cf_codes=arrays["cf_codes"],
        sem_codes=arrays["sem_codes"],
        counts=arrays["popularity"],
        warm=arrays["warm"],
        layout=TokenLayout.from_dict(meta["layout"]),
        budget=int(meta["budget"]),
        text=arrays.get("text"),
    )
    return GeneratorResult(
        generator=generator.to(device).eval(),
        router=router.to(device).eval(),
        inputs=inputs,
        layout=Layout(arrays["alpha"], arrays["n_cf"], arrays["item_tokens"]),
        decoding=DecodingConfig(**meta["decoding"]),
        best_valid=meta["best_valid"],
        valid_by_weight=meta["valid_by_dense_weight"],
        best_epoch=meta.get("best_epoch", 0),
        epochs_run=meta.get("epochs_run", 0),
        stopped_early=meta.get("stopped_early", True),
        curve=meta["curve"],
        seconds=meta.get("train_seconds", 0.0),
        generative=meta.get("generative", True),
    )
