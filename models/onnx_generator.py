"""The generator as two ONNX graphs, and an onnxruntime drop-in for `Generator` at decoding.

history_encoder  (history (B, T, C) float32 item vectors, valid (B, T) bool) -> state
                 (B, C) float32: `Generator.user_state`.
token_decoder    (state (N, C) float32, prefix (N, t) int64, 0 <= t <= L) -> log_probs
                 (N, t + 1, V) float32, the log-softmax of every position:
                 `Generator.decode`. Beam search reads the last position
                 (`next_token_scores`), candidate rescoring all of them
                 (`token_scores`).

Item vectors (the dense head's table and the history's inputs) are not in a graph: they
are computed once per item (`Generator.item_vectors`) and looked up. B, T, N and t are
dynamic. The legacy (TorchScript) exporter is used: the torch.export
based one needs onnxscript, which is not a dependency, and these two graphs have no
control flow that tracing would miss (the decoder's loop over L + 1 positions lives in the
beam search, outside the graph). An empty prefix (t = 0, the first decoding step) runs
through the same graph: the decoder prepends the state, so its sequence is never empty.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.generator import Generator, GeneratorConfig

logger = logging.getLogger(__name__)

ONNX_TOLERANCE = 1e-4  # max abs difference of log-probs/states accepted at export
OPSET = 17  # LayerNormalization is native from 17; onnxruntime >= 1.17 runs it
HISTORY_INPUTS = ("history", "valid")


class OnnxExportError(ValueError):
    """The exported graphs disagree with torch beyond the tolerance."""


class _HistoryEncoder(nn.Module):
    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, history, valid):
        return self.generator.encode(history, valid)[:, -1]  # (B, C)


class _TokenDecoder(nn.Module):
    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, state, prefix):
        logits = self.generator.decode(state, prefix)  # (N, t + 1, V)
        return F.log_softmax(logits.float(), dim=-1)


def sample_history(
    config: GeneratorConfig, batch: int = 3, length: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-padded histories for checks: ((B, T, C) item vectors, zero at padding;
    (B, T) valid), T = min(length, max_len); row b has T - b valid positions (at least
    one)."""
    g = torch.Generator().manual_seed(seed)
    length = min(length, config.max_len)
    valid = torch.arange(length)[None, :] >= torch.arange(batch)[:, None].clamp(max=length - 1)
    history = torch.randn(batch, length, config.hidden, generator=g) * 0.1 * valid[..., None]
    return history, valid


def _export(module: nn.Module, args: tuple, names: list[str], axes: dict, out: str) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The legacy exporter's deprecation notice and the tracer's "converting a tensor
        # to a Python value" warnings (the max_len check) are expected here.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            input_names=names,
            output_names=[out],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return buf.getvalue()


def export_generator_onnx(generator: Generator) -> dict[str, bytes]:
    """{"history_encoder": bytes, "token_decoder": bytes}: the generator's two inference
    graphs (module docstring), exported from a float32 CPU copy in eval mode."""
    gen = copy.deepcopy(generator).float().cpu().eval()
    cfg = gen.config
    history = sample_history(cfg, batch=2, length=min(4, cfg.max_len))
    hist_axes = {name: {0: "batch", 1: "history"} for name in HISTORY_INPUTS}
    hist_axes["state"] = {0: "batch"}
    # Traced at t = 2 (any t > 0 works) so the prefix length is a real dynamic dimension.
    state = torch.randn(2, cfg.hidden)
    prefix = torch.randint(3, cfg.vocab_size, (2, min(2, cfg.budget)))
    with torch.no_grad():
        files = {
            "history_encoder": _export(
                _HistoryEncoder(gen), tuple(history), list(HISTORY_INPUTS), hist_axes, "state"
            ),
            "token_decoder": _export(
                _TokenDecoder(gen),
                (state, prefix),
                ["state", "prefix"],
                {"state": {0: "n"}, "prefix": {0: "n", 1: "t"}, "log_probs": {0: "n", 1: "t1"}},
                "log_probs",
            ),
        }
    return files


def _providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _numpy(x: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=dtype)


class OnnxGenerator:
    """onnxruntime sessions with the methods decoding uses of `Generator`: `config`,
    `user_state`, `next_token_scores`, `token_scores` and their `*_log_probs`, `eval` (so it
    drops into the same code).

    history_encoder, token_decoder: the graphs as bytes or paths (a bundle's onnx_paths).
    device: where returned tensors live; CUDAExecutionProvider is used for a cuda device
    when onnxruntime has it, else the CPU provider. threads: intra-op threads (None =
    onnxruntime's default, all cores).
    """

    def __init__(
        self,
        config: GeneratorConfig,
        history_encoder: bytes | Path,
        token_decoder: bytes | Path,
        device: torch.device | str = "cpu",
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        self.config = config
        self.device = torch.device(device)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        providers = _providers(self.device)

        def session(model: bytes | Path):
            source = model if isinstance(model, bytes) else str(model)
            return ort.InferenceSession(source, sess_options=options, providers=providers)

        self.history_session = session(history_encoder)
        self.decoder_session = session(token_decoder)

    @classmethod
    def from_files(
        cls,
        config: GeneratorConfig,
        onnx_files: dict[str, bytes | Path],
        device: torch.device | str = "cpu",
        threads: int | None = None,
    ) -> OnnxGenerator:
        """From {"history_encoder": ..., "token_decoder": ...} (bytes or `Bundle.onnx_paths`)."""
        return cls(
            config, onnx_files["history_encoder"], onnx_files["token_decoder"], device, threads
        )

    def eval(self) -> OnnxGenerator:
        return self

    @torch.no_grad()
    def user_state(self, history: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T, C) history item vectors, (B, T) valid -> (B, C) float32 user states."""
        length = history.shape[1]
        if length > self.config.max_len:
            raise ValueError(
                f"history of {length} items exceeds max_len={self.config.max_len}; "
                "keep the most recent max_len items"
            )
        feeds = {"history": _numpy(history, np.float32), "valid": _numpy(valid, np.bool_)}
        (state,) = self.history_session.run(["state"], feeds)
        return torch.from_numpy(state).to(self.device)

    def _decode(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """state (N, C), prefix (N, t) -> (N, t + 1, V) log-probs of every position."""
        feeds = {"state": _numpy(state, np.float32), "prefix": _numpy(prefix, np.int64)}
        (log_probs,) = self.decoder_session.run(["log_probs"], feeds)
        return torch.from_numpy(log_probs).to(self.device)

    @torch.no_grad()
    def next_token_log_probs(self, state: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        """state: (B, C), prefix: (B, W, t) -> (B, W, V) float32 log-probs of token t."""
        batch, width, t = prefix.shape
        flat_state = state[:, None].expand(batch, width, -1).reshape(batch * width, -1)
        log_probs = self._decode(flat_state, prefix.reshape(batch * width, t))[:, -1]
        return log_probs.view(batch, width, -1)

    @torch.no_grad()
    def token_log_probs(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """state: (B, C), tokens: (B, M, L + 1) -> (B, M, L + 1, V) teacher-forced
        log-probs (see `Generator.token_log_probs`)."""
        batch, m, depth = tokens.shape
        flat_state = state[:, None].expand(batch, m, -1).reshape(batch * m, -1)
        log_probs = self._decode(flat_state, tokens.reshape(batch * m, depth)[:, :-1])
        return log_probs.view(batch, m, depth, -1)

    # What decoding reads (see `Generator.next_token_scores`): the graph's output is
    # already normalised, and log-probs are valid scores.
    next_token_scores = next_token_log_probs
    token_scores = token_log_probs


def check_onnx_against_torch(
    generator: Generator,
    onnx_files: dict[str, bytes | Path],
    sample: tuple[torch.Tensor, torch.Tensor] | None = None,
    seed: int = 0,
) -> float:
    """Max abs difference between the ONNX graphs and torch (float32, CPU, eval).

    sample: (history vectors, valid) to compare on (default `sample_history(config)`).
    Compares the user states, then the decoder's log-probs at every position for every
    prefix length t = 0 .. L (random code prefixes, 2 per request). Returns the largest
    difference seen."""
    gen = copy.deepcopy(generator).float().cpu().eval()
    cfg = gen.config
    onnx_gen = OnnxGenerator.from_files(cfg, onnx_files)
    history, valid = sample_history(cfg, seed=seed) if sample is None else sample
    history, valid = history.cpu().float(), valid.cpu()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        state = gen.user_state(history, valid)
        diff = (onnx_gen.user_state(history, valid) - state).abs().max().item()
        for t in range(cfg.budget + 1):
            tokens = torch.randint(3, cfg.vocab_size, (state.shape[0], 2, t + 1), generator=g)
            ref = gen.token_log_probs(state, tokens)
            got = onnx_gen.token_log_probs(state, tokens)
            diff = max(diff, (got - ref).abs().max().item())
    return float(diff)


def export_checked(
    generator: Generator, tolerance: float = ONNX_TOLERANCE
) -> tuple[dict[str, bytes], float]:
    """Export (`export_generator_onnx`) and check (`check_onnx_against_torch`); returns
    (files, max abs difference). OnnxExportError when the difference exceeds tolerance."""
    files = export_generator_onnx(generator)
    diff = check_onnx_against_torch(generator, files)
    if not diff <= tolerance:
        raise OnnxExportError(
            f"ONNX generator differs from torch by {diff:.3g} (> {tolerance:g}); the export "
            "is refused. Check the opset and any op the exporter may have changed."
        )
    logger.info("ONNX generator matches torch: max abs diff %.3g", diff)
    return files, diff
