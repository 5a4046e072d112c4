"""Stage C: train the dual-codebook tokenizer and assign every item its codes.

Inputs: the semantic embeddings (stage B, text -> MiniLM) and the CF embeddings (stage
A, the SASRec item table). Both RQ-VAEs and the alignment heads are trained jointly on
the WARM items (those with training interactions): a cold item's SASRec row never saw a
positive gradient, so quantising it would teach the CF codebook noise. Cold items get
their CF codes imputed later, the way a newly added item does.

Writes into `<run_dir>/tokenizer/`:
  tokenizer.safetensors   weights of both RQ-VAEs, the heads and the input standardisation
  tokenizer.json          DualTokenizerConfig, training config, loss curve
  codes.npz               sem_codes, cf_codes: (N + 1, L_max) int64 (row 0 padding = -1);
                          warm: (N + 1,) bool
  report.json, report.md  the tokenizer report (see `tokenizer_report`)
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from models.alignment import AlignmentConfig, CrossCodebookAlignment, alignment_ranks
from models.config import Config, check_positive_int_tuple, check_positive_ints, check_range
from models.dual_tokenizer import DualTokenizer, DualTokenizerConfig, DualTokenizerLoss
from models.rqvae import RQVAEConfig, suggest_codebook_size
from models.tokens import (
    TokenLayout,
    code_sequences,
    collision_rates_by_split,
    max_dedup_needed,
)
from training.data.preprocess import warm_mask
from training.device import seed_everything

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TokenizerSpec(Config):
    """The knobs a user sets; `build_config` turns them into a DualTokenizerConfig."""

    latent_dim: int = 32  # d; the paper's 64 is for 10k+ item catalogs
    hidden_dims: tuple[int, ...] = (256, 128)
    n_levels: int = 6  # L_max: the budget sweep goes up to L = 6 from one codebook
    codebook_size: int | None = None  # K; None = suggest_codebook_size(n_items)
    lambda_cca: float = 0.1  # the paper's default; 0 = the no-align ablation
    temperature: float = 0.1
    proj_dim: int = 64

    def __post_init__(self) -> None:
        check_positive_ints(self, "latent_dim", "n_levels", "proj_dim")
        check_positive_int_tuple(self, "hidden_dims")
        check_range(
            self, "codebook_size", 1, optional=True, integer=True, hint="(None = the catalog's)"
        )
        check_range(self, "lambda_cca", 0, hint="(0 = the no-align ablation)")
        check_range(self, "temperature", 0, low_open=True)


@dataclass(frozen=True)
class TokenizerTrainConfig(Config):
    epochs: int = 300  # ~2k steps on ML-100K; losses are flat well before
    batch_size: int = 256  # also the InfoNCE negatives per positive
    lr: float = 1e-3
    restart_every: int = 10  # epochs between dead-code restarts
    restart_until: float = 0.8  # then let the codes settle without churn
    seed: int = 0
    report_budget: int = 5  # L for the collision report (the paper's default)
    # Warm items kept out of the alignment loss (still reconstructed) so the report can
    # measure alignment on items the heads never matched, which is what cold-start
    # imputation relies on. In-sample ranks are near perfect for any trained heads.
    align_holdout: float = 0.1
    probe_epochs: int = 100  # head-only training for the alignment probe

    def __post_init__(self) -> None:
        check_positive_ints(self, "epochs", "batch_size", "restart_every", "report_budget")
        check_range(self, "lr", 0, low_open=True)
        check_range(self, "restart_until", 0.0, 1.0)
        check_range(self, "align_holdout", 0.0, 1.0, high_open=True)
        check_range(self, "probe_epochs", 0, integer=True)


@dataclass
class TokenizerResult:
    model: DualTokenizer
    sem_codes: np.ndarray  # (N + 1, L_max) int64, row 0 = -1
    cf_codes: np.ndarray  # (N + 1, L_max) int64, row 0 = -1
    warm: np.ndarray  # (N + 1,) bool, items the tokenizer was trained on
    align_holdout: np.ndarray  # (N + 1,) bool, warm items kept out of L_CCA
    curve: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def build_config(
    spec: TokenizerSpec, sem_dim: int, cf_dim: int, n_items: int
) -> DualTokenizerConfig:
    codebook_size = spec.codebook_size or suggest_codebook_size(n_items)
    common = {
        "latent_dim": spec.latent_dim,
        "hidden_dims": spec.hidden_dims,
        "n_levels": spec.n_levels,
        "codebook_size": codebook_size,
    }
    return DualTokenizerConfig(
        sem=RQVAEConfig(input_dim=sem_dim, **common),
        cf=RQVAEConfig(input_dim=cf_dim, **common),
        alignment=AlignmentConfig(
            sem_dim=sem_dim,
            cf_dim=cf_dim,
            proj_dim=spec.proj_dim,
            temperature=spec.temperature,
            weight=spec.lambda_cca,
        ),
    )


def train_tokenizer(
    sem_emb: np.ndarray,
    cf_emb: np.ndarray,
    warm: np.ndarray,
    config: DualTokenizerConfig,
    train_config: TokenizerTrainConfig,
    device: torch.device,
    progress: bool = True,
) -> TokenizerResult:
    """sem_emb: (N + 1, D_sem), cf_emb: (N + 1, D_cf), warm: (N + 1,) bool; row 0 is padding."""
    if not (len(sem_emb) == len(cf_emb) == len(warm)):
        raise ValueError(
            f"embeddings disagree on the catalog: {len(sem_emb)} semantic rows, "
            f"{len(cf_emb)} CF rows, {len(warm)} items"
        )
    warm = warm_mask(warm)
    n_warm = int(warm.sum())
    if n_warm < config.sem.codebook_size:
        raise ValueError(
            f"{n_warm} warm items cannot fill {config.sem.codebook_size} codes per level; "
            "pass a smaller codebook_size"
        )
    started = time.perf_counter()
    seed_everything(train_config.seed)
    generator = torch.Generator().manual_seed(train_config.seed)
    sem_x = torch.as_tensor(sem_emb[warm], dtype=torch.float32, device=device)
    cf_x = torch.as_tensor(cf_emb[warm], dtype=torch.float32, device=device)

    holdout = np.zeros_like(warm)
    warm_ids = np.flatnonzero(warm)
    n_holdout = round(train_config.align_holdout * n_warm)
    holdout[np.random.default_rng(train_config.seed).permutation(warm_ids)[:n_holdout]] = True
    in_alignment = torch.as_tensor(~holdout[warm], device=device)

    model = DualTokenizer(config).to(device)
    model.fit_standardisation(sem_x, cf_x)
    model.init_codebooks(sem_x, cf_x, generator=generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_config.lr)
    last_restart_epoch = int(train_config.restart_until * train_config.epochs)
    curve: list[dict] = []
    epochs = tqdm(range(1, train_config.epochs + 1), desc="tokenizer", disable=not progress)
    for epoch in epochs:
        model.train()
        # Summed on the device, read once per epoch: a .item() per loss term and batch
        # made a CUDA run wait on the GPU six times a step (stage C was slower on an H200
        # than on 2 CPU cores).
        sums = torch.zeros(len(DualTokenizerLoss._fields), device=device)
        order = torch.randperm(n_warm, generator=generator).to(device)
        batches = order.split(train_config.batch_size)
        for batch in batches:
            loss = model(sem_x[batch], cf_x[batch], in_alignment[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.total.backward()
            optimizer.step()
            sums += torch.stack([t.detach().float() for t in loss])
        means = (sums / len(batches)).cpu().numpy()
        if epoch % train_config.restart_every == 0 and epoch <= last_restart_epoch:
            with torch.no_grad():
                restarted = model.sem.quantizer.restart_dead_codes(
                    model.sem.encoder(model.standardise_sem(sem_x)), generator=generator
                ) + model.cf.quantizer.restart_dead_codes(
                    model.cf.encoder(model.standardise_cf(cf_x)), generator=generator
                )
        else:
            restarted = 0
        if epoch % 10 == 0 or epoch == train_config.epochs:
            names = DualTokenizerLoss._fields
            curve.append({"epoch": epoch, **dict(zip(names, map(float, means), strict=True))})
            curve[-1]["restarted_codes"] = restarted
            epochs.set_postfix(loss=f"{means[0]:.3f}", align=f"{means[5]:.3f}")

    model.eval()
    sem_codes, cf_codes = encode_all(model, sem_emb, cf_emb, device)
    seconds = time.perf_counter() - started
    logger.info("tokenizer trained on %d warm items in %.1fs", n_warm, seconds)
    return TokenizerResult(model, sem_codes, cf_codes, warm, holdout, curve, seconds)


def encode_all(
    model: DualTokenizer, sem_emb: np.ndarray, cf_emb: np.ndarray, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Codes of every item (row 0, padding, gets -1)."""
    sem = model.encode_sem(torch.as_tensor(sem_emb, dtype=torch.float32, device=device))
    cf = model.encode_cf(torch.as_tensor(cf_emb, dtype=torch.float32, device=device))
    sem_codes, cf_codes = sem.cpu().numpy(), cf.cpu().numpy()
    sem_codes[0] = cf_codes[0] = -1
    return sem_codes, cf_codes


# --- the report ----------------------------------------------------------------------


def level_usage(codes: np.ndarray, codebook_size: int) -> list[dict]:
    """Per level: codes used, their share of K, and the perplexity of the code distribution."""
    out = []
    for level in range(codes.shape[1]):
        counts = np.bincount(codes[:, level], minlength=codebook_size)
        p = counts[counts > 0] / counts.sum()
        out.append(
            {
                "level": level,
                "used": int((counts > 0).sum()),
                "used_fraction": float((counts > 0).mean()),
                "perplexity": float(np.exp(-(p * np.log(p)).sum())),
            }
        )
    return out


@torch.no_grad()
def reconstruction_errors(model: DualTokenizer, sem_x: torch.Tensor, cf_x: torch.Tensor) -> dict:
    """MSE in the standardised input space (1.0 = predicting the mean) after decoding the
    first 1..L_max levels, per codebook."""
    out = {}
    for name, rqvae, x in (
        ("sem", model.sem, model.standardise_sem(sem_x)),
        ("cf", model.cf, model.standardise_cf(cf_x)),
    ):
        codes = rqvae.encode(x)
        out[name] = [
            float((rqvae.decode(codes[:, :levels]) - x).pow(2).mean())
            for levels in range(1, codes.shape[1] + 1)
        ]
    return out


def rank_summary(ranks: np.ndarray, n_candidates: int) -> dict:
    return {
        "items": len(ranks),
        "candidates": n_candidates,
        "mean_rank": float(ranks.mean()) if len(ranks) else float("nan"),
        "median_rank": float(np.median(ranks)) if len(ranks) else float("nan"),
        "recall@1": float((ranks < 1).mean()) if len(ranks) else float("nan"),
        "recall@10": float((ranks < 10).mean()) if len(ranks) else float("nan"),
        "chance_mean_rank": (n_candidates - 1) / 2,
    }


@torch.no_grad()
def _reconstructions(model: DualTokenizer, sem_codes: np.ndarray, cf_codes: np.ndarray):
    device = model.sem_mean.device
    sem = model.sem.decode(torch.as_tensor(sem_codes, device=device))
    cf = model.cf.decode(torch.as_tensor(cf_codes, device=device))
    return sem, cf


def _split_ranks(align: CrossCodebookAlignment, sem, cf, holdout: np.ndarray) -> dict:
    """Ranks of each item's own CF projection among ALL items' when queried with its
    semantic projection, summarised separately for items in and out of the alignment
    training (the held-out figure is the one that says something)."""
    ranks = alignment_ranks(align.project_sem(sem), align.project_cf(cf))
    return {
        "held_out": rank_summary(ranks[holdout], len(ranks)),
        "in_sample": rank_summary(ranks[~holdout], len(ranks)),
    }


def alignment_quality(
    model: DualTokenizer, sem_codes: np.ndarray, cf_codes: np.ndarray, holdout: np.ndarray
) -> dict:
    """Alignment of the items' CODES (what the tokens carry) through the model's heads.
    All arrays are over warm items; holdout marks those kept out of L_CCA."""
    sem, cf = _reconstructions(model, sem_codes, cf_codes)
    return _split_ranks(model.align, sem, cf, holdout)


def probe_alignment(
    model: DualTokenizer,
    sem_codes: np.ndarray,
    cf_codes: np.ndarray,
    holdout: np.ndarray,
    train_config: TokenizerTrainConfig,
) -> dict:
    """Fresh projection heads trained with InfoNCE on the FROZEN reconstructions of the
    non-held-out items, evaluated like `alignment_quality`.

    For a tokenizer trained without CCA its own heads are untrained, so their ranks say
    nothing; this probe measures how alignable its codebooks are, which is the fair
    comparison for what CCA adds to the codebooks themselves.
    """
    seed_everything(train_config.seed)
    generator = torch.Generator().manual_seed(train_config.seed)
    sem, cf = _reconstructions(model, sem_codes, cf_codes)
    train_rows = torch.as_tensor(np.flatnonzero(~holdout), device=sem.device)
    heads = CrossCodebookAlignment(model.config.alignment).to(sem.device)
    optimizer = torch.optim.Adam(heads.parameters(), lr=train_config.lr)
    for _ in range(train_config.probe_epochs):
        order = train_rows[torch.randperm(len(train_rows), generator=generator).to(sem.device)]
        for batch in order.split(train_config.batch_size):
            loss, _, _ = heads(sem[batch], cf[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    heads.eval()
    return _split_ranks(heads, sem, cf, holdout)


def tokenizer_report(
    result: TokenizerResult,
    sem_emb: np.ndarray,
    cf_emb: np.ndarray,
    train_config: TokenizerTrainConfig,
    probe: bool = True,
) -> dict:
    model, warm = result.model, result.warm
    config = model.config
    device = model.sem_mean.device
    sem_codes, cf_codes = result.sem_codes[warm], result.cf_codes[warm]
    holdout = result.align_holdout[warm]
    sem_x = torch.as_tensor(sem_emb[warm], dtype=torch.float32, device=device)
    cf_x = torch.as_tensor(cf_emb[warm], dtype=torch.float32, device=device)
    k = config.sem.codebook_size
    layout = TokenLayout(codebook_size=k, n_levels=config.sem.n_levels, dedup_size=len(sem_codes))
    budget = min(train_config.report_budget, config.sem.n_levels)
    collisions = collision_rates_by_split(cf_codes, sem_codes, budget, layout)
    report = {
        "warm_items": int(warm.sum()),
        "codebook_size": k,
        "n_levels": config.sem.n_levels,
        "lambda_cca": config.alignment.weight,
        "train_seconds": round(result.seconds, 1),
        "reconstruction_mse": reconstruction_errors(model, sem_x, cf_x),
        "usage": {"sem": level_usage(sem_codes, k), "cf": level_usage(cf_codes, k)},
        "collision_rate": {
            "budget": budget,
            "by_n_cf": {str(n): rate for n, rate in collisions.items()},
        },
        "max_dedup_needed": {
            str(n_cf): max_dedup_needed(code_sequences(cf_codes, sem_codes, n_cf, budget, layout))
            for n_cf in range(budget + 1)
        },
        "alignment": alignment_quality(model, sem_codes, cf_codes, holdout),
    }
    if probe:
        report["alignment_probe"] = probe_alignment(
            model, sem_codes, cf_codes, holdout, train_config
        )
    return report


def report_markdown(report: dict, baseline: dict | None = None) -> str:
    """A short markdown section; `baseline` is the no-align twin's report, if trained."""
    lines = [
        f"Warm items {report['warm_items']}, K = {report['codebook_size']} codes x "
        f"{report['n_levels']} levels per codebook, lambda_CCA = {report['lambda_cca']}, "
        f"trained in {report['train_seconds']} s.",
        "",
        "| codebook | MSE after 1..L_max levels (standardised; 1 = the mean) "
        "| codes used per level | perplexity per level |",
        "|---|---|---|---|",
    ]
    for name in ("sem", "cf"):
        mse = " / ".join(f"{v:.3f}" for v in report["reconstruction_mse"][name])
        used = " / ".join(str(u["used"]) for u in report["usage"][name])
        ppl = " / ".join(f"{u['perplexity']:.0f}" for u in report["usage"][name])
        lines.append(f"| {name} | {mse} | {used} | {ppl} |")
    budget = report["collision_rate"]["budget"]
    rates = report["collision_rate"]["by_n_cf"]
    lines += [
        "",
        f"Collision rate before dedup at L = {budget}, every item with the same split:",
        "",
        "| Lcol (CF tokens) | " + " | ".join(rates) + " |",
        "|---" * (len(rates) + 1) + "|",
        "| collision rate | " + " | ".join(f"{v:.3f}" for v in rates.values()) + " |",
        "| max dedup id + 1 | "
        + " | ".join(str(report["max_dedup_needed"][n]) for n in rates)
        + " |",
        "",
        "Alignment: rank of an item's own CF projection among all warm items' when queried "
        "with its semantic projection (0 = best; chance = "
        f"{report['alignment']['held_out']['chance_mean_rank']:.0f}), for the "
        f"{report['alignment']['held_out']['items']} warm items held out of the alignment "
        "training, and in-sample.",
        "",
        "| tokenizer | heads | held-out mean rank | median | recall@1 | recall@10 "
        "| in-sample mean rank | recall@1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(f"CCA (lambda = {report['lambda_cca']:g})", report)]
    if baseline is not None:
        rows.append(("no-align (lambda = 0)", baseline))
    for label, rep in rows:
        for heads, key in (("own", "alignment"), ("probe", "alignment_probe")):
            if key in rep:
                out, ins = rep[key]["held_out"], rep[key]["in_sample"]
                lines.append(
                    f"| {label} | {heads} | {out['mean_rank']:.1f} | {out['median_rank']:.0f} | "
                    f"{out['recall@1']:.3f} | {out['recall@10']:.3f} | {ins['mean_rank']:.1f} | "
                    f"{ins['recall@1']:.3f} |"
                )
    lines += [
        "",
        "'own' = the tokenizer's projection heads; 'probe' = fresh heads trained on the frozen "
        "reconstructions of the same non-held-out items (for lambda = 0 the own heads are "
        "untrained, so the probe is the fair comparison).",
    ]
    return "\n".join(lines)


# --- artifacts -------------------------------------------------------------------------


def save_tokenizer(
    result: TokenizerResult, train_config: TokenizerTrainConfig, out_dir: Path, report: dict | None
) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous().cpu() for k, v in result.model.state_dict().items()}
    save_file(weights, out_dir / "tokenizer.safetensors")
    meta = {
        "config": result.model.config.to_dict(),
        "train_config": asdict(train_config),
        "curve": result.curve,
        "train_seconds": result.seconds,
    }
    (out_dir / "tokenizer.json").write_text(json.dumps(meta, indent=2))
    np.savez(
        out_dir / "codes.npz",
        sem_codes=result.sem_codes,
        cf_codes=result.cf_codes,
        warm=result.warm,
        align_holdout=result.align_holdout,
    )
    if report is not None:
        (out_dir / "report.json").write_text(json.dumps(report, indent=2))


def load_tokenizer(out_dir: Path, device: torch.device) -> tuple[DualTokenizer, dict]:
    """The trained module and its codes (`sem_codes`, `cf_codes`, `warm`)."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "tokenizer.json").read_text())
    model = DualTokenizer(DualTokenizerConfig.from_dict(meta["config"]))
    model.load_state_dict(load_file(out_dir / "tokenizer.safetensors"))
    codes = dict(np.load(out_dir / "codes.npz"))
    return model.to(device).eval(), codes
