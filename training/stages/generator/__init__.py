"""Stage D: the router (PATA) and the generator (ARG), trained on stage C's codes.

One module per job, in the order the data flows:

    variants   the shipped configuration and the paper's ablations, as data
    inputs     per-item arrays: codes (cold CF codes imputed), ids, text, served tokens
    train      the training step (router + generator) on the loop shared with SASRec
    evaluate   the served decoding measured; exact full-catalogue scoring beside it
    artifacts  save / load of a trained stage D
    runner     stage D for a named variant on a run directory; the benchmark runner
"""

from training.stages.generator.artifacts import load_generator, save_generator
from training.stages.generator.inputs import ItemInputs, build_item_inputs
from training.stages.generator.runner import flexcode_runner, report_on_test_split, train_variant
from training.stages.generator.train import (
    GeneratorResult,
    GeneratorTrainConfig,
    train_generator,
)
from training.stages.generator.variants import SHIPPED, VARIANTS, Variant

__all__ = [
    "SHIPPED",
    "VARIANTS",
    "GeneratorResult",
    "GeneratorTrainConfig",
    "ItemInputs",
    "Variant",
    "build_item_inputs",
    "flexcode_runner",
    "load_generator",
    "report_on_test_split",
    "save_generator",
    "train_generator",
    "train_variant",
]
