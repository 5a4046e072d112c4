"""The sentence encoder as one ONNX graph run by onnxruntime: `TextEncoder`'s "onnx" backend.

Graph: (input_ids (B, T) int64, attention_mask (B, T) int64) -> embedding (B, 384)
float32: the BERT transformer, mean pooling over the attention mask and L2 normalisation,
i.e. exactly the sentence-transformers pipeline Transformer -> Pooling(mean) -> Normalize.
The same tokenizer object as the torch backend turns texts into ids, so both backends
agree to float rounding (2e-7 max abs on ML-100K and synthetic item texts, BENCHMARKS.md)
and share one model id: a stage B cache written by either serves the other, and a bundle
trained with one is served by the other.

Why: on one CPU core onnxruntime runs MiniLM about twice as fast as torch (BENCHMARKS.md,
"Text embeddings"). The export takes about a second, so it is done in memory when the
encoder loads instead of being cached on disk: nothing to invalidate when the weights,
torch or onnxruntime change, and the service writes no files. The legacy (TorchScript)
exporter is used, as in models/onnx_generator.py: the torch.export based one needs
onnxscript, which is not a dependency.
"""

from __future__ import annotations

import io
import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

OPSET = 17  # LayerNormalization is native from 17; onnxruntime >= 1.17 runs it
# Max abs difference to the torch backend accepted at export (measured: 2e-7). Below it
# the two backends share a model id (cache keys, a bundle's text_model_id).
ONNX_TOLERANCE = 1e-5
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "embedding"
# Checked at export: short, long, empty and non-ASCII texts, padded to different lengths.
_CHECK_TEXTS = (
    "Toy Story. Categories: Animation, Children's, Comedy. Year: 1995.",
    "",
    "Amélie. Categories: Comedy, Romance. Description: " + "a shy waitress in Paris " * 20,
    "kitchen knife set",
)


class OnnxTextExportError(ValueError):
    """The model cannot be exported, or its ONNX graph disagrees with torch."""


class _SentenceGraph(nn.Module):
    """Transformer -> masked mean -> L2 normalise, as sentence-transformers computes it."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=torch.zeros_like(input_ids),  # one segment, as the tokenizer gives
        ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return F.normalize(mean, p=2, dim=1)


def _check_pipeline(model) -> None:
    """Refuse models the graph would not reproduce (another pooling, extra layers)."""
    names = [type(module).__name__ for module in model]
    pooling = getattr(model[1], "pooling_mode", None) if len(names) > 1 else None
    if names != ["Transformer", "Pooling", "Normalize"] or pooling != "mean":
        raise OnnxTextExportError(
            f"the onnx text backend reproduces Transformer -> Pooling(mean) -> Normalize, "
            f"this model is {names} (pooling {pooling!r}); use TextEncoderConfig(backend="
            '"torch") for it'
        )


def export_sentence_onnx(model) -> bytes:
    """The ONNX graph (module docstring) of a loaded SentenceTransformer, exported from a
    float32 CPU copy of its transformer; B and T are dynamic."""
    _check_pipeline(model)
    transformer = model[0].auto_model
    graph = _SentenceGraph(transformer).eval()
    sample = model.tokenizer(["a b", "a"], padding=True, return_tensors="pt")
    args = tuple(sample[name].to(torch.int64).cpu() for name in INPUTS)
    axes = {name: {0: "batch", 1: "tokens"} for name in INPUTS}
    axes[OUTPUT] = {0: "batch"}
    buf = io.BytesIO()
    device = next(transformer.parameters()).device
    transformer.float().cpu()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The legacy exporter's deprecation notice and the tracer's warnings are expected.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                args,
                buf,
                dynamo=False,
                input_names=list(INPUTS),
                output_names=[OUTPUT],
                dynamic_axes=axes,
                opset_version=OPSET,
                do_constant_folding=True,
            )
    finally:
        transformer.to(device)
    return buf.getvalue()


class OnnxSentenceEncoder:
    """Texts -> (n, dim) float32 unit vectors with onnxruntime.

    tokenizer: the sentence-transformers model's tokenizer (so ids match the torch
    backend's). threads: onnxruntime intra-op threads (None: its default, all cores).
    device: a cuda device uses CUDAExecutionProvider when onnxruntime has it, else the CPU.
    """

    def __init__(
        self,
        graph: bytes,
        tokenizer,
        max_seq_length: int,
        threads: int | None = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1  # one chain of ops: nothing to run side by side
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
            else:
                logger.warning(
                    "onnxruntime has no CUDA provider: the onnx text encoder runs on the CPU "
                    "(install onnxruntime-gpu, or use TextEncoderConfig(backend='torch'))"
                )
        self.session = ort.InferenceSession(graph, sess_options=options, providers=providers)
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.dim = int(self.session.get_outputs()[0].shape[1])

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's word-piece ids with [CLS]/[SEP], cut to max_seq_length, unpadded."""
        out = self.tokenizer(
            list(texts), padding=False, truncation=True, max_length=self.max_seq_length
        )
        return out["input_ids"]

    def encode(self, texts: Sequence[str], batch_size: int, progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 unit vectors, in input order; "" is a valid text."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not len(texts):
            return out
        ids = self.token_ids(texts)
        lengths = np.array([len(row) for row in ids])
        # Longest first, by word pieces (the tokenizer is ~1% of the time): each batch pads
        # to near its own length. sentence-transformers sorts by characters, which pads
        # more (about 10% slower on ML-100K titles at batch 32).
        order = np.argsort(-lengths, kind="stable")
        starts = range(0, len(order), batch_size)
        if progress:
            from tqdm.auto import tqdm  # a sentence-transformers dependency

            starts = tqdm(starts, desc="Batches")
        for start in starts:
            rows = order[start : start + batch_size]
            width = int(lengths[rows[0]])
            input_ids = np.zeros((len(rows), width), dtype=np.int64)  # [PAD] is id 0
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for i, row in enumerate(rows):
                input_ids[i, : lengths[row]] = ids[row]
                mask[i, : lengths[row]] = 1
            (emb,) = self.session.run([OUTPUT], {"input_ids": input_ids, "attention_mask": mask})
            out[rows] = emb
        return out


def onnx_encoder_from(
    model, max_seq_length: int, threads: int | None = 1, device: torch.device | str = "cpu"
) -> OnnxSentenceEncoder:
    """Export a loaded SentenceTransformer and check the graph against it on a few texts;
    raises OnnxTextExportError when they differ by more than ONNX_TOLERANCE."""
    encoder = OnnxSentenceEncoder(
        export_sentence_onnx(model), model.tokenizer, max_seq_length, threads, device
    )
    texts = list(_CHECK_TEXTS)
    with torch.inference_mode():
        expected = model.encode(
            texts, batch_size=len(texts), convert_to_numpy=True, normalize_embeddings=True
        )
    diff = float(np.abs(encoder.encode(texts, batch_size=len(texts)) - expected).max())
    if not diff <= ONNX_TOLERANCE:
        raise OnnxTextExportError(
            f"the ONNX text encoder differs from torch by {diff:.2e} (> {ONNX_TOLERANCE:.0e}); "
            "use TextEncoderConfig(backend='torch'), or check the onnx/onnxruntime versions"
        )
    logger.info("onnx text encoder exported; max abs difference to torch %.1e", diff)
    return encoder
