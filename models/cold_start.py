"""Cold-start tokenization: codes for an item no user has interacted with yet.

The same path serves the cold-holdout evaluation (training) and POST /items (serving):

  text embedding -> semantic RQ-VAE -> semantic codes
  the router at zero interactions -> alpha (its floor, cold_alpha) -> n_cf = round(alpha * L)
  semantic codes -> aligned (CCA) space -> nearest warm item's CF projection -> its CF codes
  codes weighted by the router's gate, no id, + text -> the item's vector for the dense head

A cold item's own CF embedding was never trained, so its collaborative codes have to be
borrowed; the aligned space is where text meets co-consumption, which is what the
InfoNCE loss trained it for. The dedup token is NOT assigned here: it depends on the
other items sharing the prefix, which only the catalog (training table, or the serving
store's atomic counter) knows. What IS computed here is each item's placement order
(`models.placement.placement_order`): where the store puts the item when the dedup block of
its own prefix is full, the code sequences nearest to its own first, ranked by the
RQ-VAE's distances (`ranked_codes`).

The FAISS index builder is separate from the lookup so the index can be built once at
export and loaded by the service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import faiss
import numpy as np
import torch

from models.dual_tokenizer import DualTokenizer
from models.generator import Generator, ItemFeatures
from models.placement import placement_order
from models.router import Router
from models.tokens import TokenLayout, code_sequences

if TYPE_CHECKING:  # models.bundle imports this module: the bundle is only a type here
    from models.bundle import BundleContents


def build_imputation_index(vectors: np.ndarray) -> faiss.Index:
    """Exact inner-product index over (W, P) L2-normalised vectors (cosine = inner product).

    Exact (flat) search: W is the warm catalog, at most ~1M rows of P = 64 floats, and an
    approximate index would change which item a cold item copies between rebuilds.
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] == 0:
        raise ValueError(f"vectors must be a non-empty (W, P) array, got {vectors.shape}")
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


# Rows projected at a time: the decoder and projection MLPs' activations of a 1M-item
# catalogue at once would take GBs; per batch they stay ~100 MB.
PROJECTION_BATCH = 65_536


@torch.no_grad()
def _aligned_vectors(project, codes: np.ndarray, device: torch.device) -> np.ndarray:
    codes = np.asarray(codes)
    parts = [
        torch.nn.functional.normalize(
            project(torch.as_tensor(codes[i : i + PROJECTION_BATCH], device=device)).float(),
            dim=1,
        )
        .cpu()
        .numpy()
        for i in range(0, max(len(codes), 1), PROJECTION_BATCH)  # one call when empty
    ]
    return np.concatenate(parts)


def aligned_cf_vectors(tokenizer: DualTokenizer, cf_codes: np.ndarray) -> np.ndarray:
    """(W, L_max) CF codes -> (W, P) float32 L2-normalised aligned CF projections."""
    device = next(tokenizer.parameters()).device
    return _aligned_vectors(tokenizer.project_cf_codes, cf_codes, device)


def aligned_sem_vectors(tokenizer: DualTokenizer, sem_codes: np.ndarray) -> np.ndarray:
    """(M, L_max) semantic codes -> (M, P) float32 L2-normalised aligned projections."""
    device = next(tokenizer.parameters()).device
    return _aligned_vectors(tokenizer.project_sem_codes, sem_codes, device)


def nearest_warm(
    tokenizer: DualTokenizer,
    sem_codes: np.ndarray,
    index: faiss.Index,
    index_ids: np.ndarray,
) -> np.ndarray:
    """(M, L_max) semantic codes -> (M,) int64 id of the warm item whose aligned CF
    projection is nearest (cosine) to each item's aligned semantic projection."""
    if len(sem_codes) == 0:
        return np.zeros(0, dtype=np.int64)
    _, rows = index.search(aligned_sem_vectors(tokenizer, sem_codes), 1)
    return np.asarray(index_ids, dtype=np.int64)[rows[:, 0]]


@torch.no_grad()
def ranked_codes(codebooks: torch.Tensor, start: torch.Tensor, codes: np.ndarray) -> np.ndarray:
    """Every level's codes ranked for each of M items, nearest first: (M, L_max, K) int64.

    codebooks: (L_max, K, d) one residual quantiser's codewords; start: (M, d) what its
    levels quantise; codes: (M, L_max) the items' codes. Level l ranks its codewords by
    squared distance to the item's residual there, start minus the codewords of its codes
    at levels < l (the path `ResidualQuantizer.encode` walks). The item's own code comes
    first even where another is as near: step 0 of a placement order is its own codes.
    Ties among the others go to the lowest code (a stable sort), so the order is
    deterministic.
    """
    books = codebooks.detach().float()
    codes_t = torch.as_tensor(np.asarray(codes), dtype=torch.long, device=books.device)
    residual = start.detach().float().to(books.device)  # (M, d)
    rows = torch.arange(codes_t.shape[0], device=books.device)
    ranked = []
    for level in range(books.shape[0]):
        book = books[level]  # (K, d)
        # Expanded, as the quantiser measures it: (M, K), never an (M, K, d) difference.
        dist = residual.pow(2).sum(1, keepdim=True) - 2 * residual @ book.T + book.pow(2).sum(1)
        dist[rows, codes_t[:, level]] = float("-inf")
        ranked.append(np.argsort(dist.cpu().numpy(), axis=1, kind="stable"))
        residual = residual - book[codes_t[:, level]]
    return np.stack(ranked, axis=1).astype(np.int64)


def sem_ranked_codes(
    tokenizer: DualTokenizer, sem_x: torch.Tensor, sem_codes: np.ndarray
) -> np.ndarray:
    """(M, L_max, K) semantic codes ranked around each item's text latent."""
    latent = tokenizer.sem.encoder(tokenizer.standardise_sem(sem_x))
    return ranked_codes(tokenizer.sem.quantizer.codebooks, latent, sem_codes)


def cf_ranked_codes(tokenizer: DualTokenizer, cf_codes: np.ndarray) -> np.ndarray:
    """(M, L_max, K) CF codes ranked around borrowed codes. A new item has no CF latent
    (its codes are a warm item's), so their reconstruction stands in for it."""
    quantizer = tokenizer.cf.quantizer
    codes = torch.as_tensor(cf_codes, dtype=torch.long, device=quantizer.codebooks.device)
    return ranked_codes(quantizer.codebooks, quantizer.decode(codes), cf_codes)


@dataclass(frozen=True)
class NewItemCodes:
    """Codes of M new items. prefixes: (M, L) int64 code tokens in the order the item is
    written (its dominant codebook first), without the dedup token."""

    sem_codes: np.ndarray  # (M, L_max) int64
    cf_codes: np.ndarray  # (M, L_max) int64, borrowed from `neighbours`
    neighbours: np.ndarray  # (M,) int64 the warm item each one borrowed from
    alpha: np.ndarray  # (M,) float32 CF share
    n_cf: np.ndarray  # (M,) int64 CF tokens of the L
    prefixes: np.ndarray  # (M, L) int64 (`models.tokens.code_sequences`)
    vectors: np.ndarray  # (M, C) float32 item vectors for the dense head
    # (M, L, W) int64 where to put each item when its prefix is full; row m's step 0 is
    # prefixes[m] (`models.placement.placement_order`)
    placement_order: np.ndarray


def served_item_features(
    router: Router,
    layout: TokenLayout,
    budget: int,
    ids: np.ndarray,
    cf_codes: np.ndarray,
    sem_codes: np.ndarray,
    alpha: np.ndarray,
    text: np.ndarray | None,
    device: torch.device | str,
    padding_row: bool = False,
) -> ItemFeatures:
    """ItemFeatures of M items as serving writes them: their first `budget` levels of
    each codebook, weighted by the router's gate at their alpha (M,); ids (M,) (0 = none).
    padding_row: row 0 is a catalogue's padding row."""
    features = ItemFeatures.from_codes(
        layout, budget, ids, cf_codes, sem_codes, text, device, padding_row
    )
    alpha_t = torch.as_tensor(np.asarray(alpha, dtype=np.float32), device=features.ids.device)
    return features.weighted(router.code_weights(alpha_t))


@dataclass
class ColdStart:
    """Everything the cold-start path reads, built once (`from_bundle`, or from stage D's
    results) and then asked for any number of new items (`tokenize`).

    cf_codes_table: (N + 1, L_max) CF codes of the catalogue; imputation_ids index into it
    and name the rows of `imputation_index`.
    """

    tokenizer: DualTokenizer
    router: Router
    generator: Generator
    layout: TokenLayout
    budget: int
    imputation_index: faiss.Index
    imputation_ids: np.ndarray
    cf_codes_table: np.ndarray

    @classmethod
    def from_bundle(cls, bundle: BundleContents) -> ColdStart:
        """The cold-start path of a bundle: a loaded `Bundle` or the `BundleContents` an
        export is about to write (its modules are used as they are, not copied)."""
        return cls(
            tokenizer=bundle.tokenizer,
            router=bundle.router,
            generator=bundle.generator,
            layout=bundle.layout,
            budget=bundle.budget,
            imputation_index=bundle.imputation_index,
            imputation_ids=bundle.imputation_ids,
            cf_codes_table=bundle.cf_codes,
        )

    @torch.no_grad()
    def tokenize(self, sem_embeddings: np.ndarray) -> NewItemCodes:
        """Codes and vectors of M new items from their (M, D_sem) text embeddings."""
        sem_embeddings = np.asarray(sem_embeddings, dtype=np.float32)
        if sem_embeddings.ndim != 2:
            raise ValueError(f"sem_embeddings must be (M, D), got {sem_embeddings.shape}")
        device = next(self.tokenizer.parameters()).device
        n = sem_embeddings.shape[0]
        sem_x = torch.as_tensor(sem_embeddings, device=device)
        sem_codes = self.tokenizer.encode_sem(sem_x).cpu().numpy().astype(np.int64)
        neighbours = nearest_warm(
            self.tokenizer, sem_codes, self.imputation_index, self.imputation_ids
        )
        cf_codes = np.asarray(self.cf_codes_table, dtype=np.int64)[neighbours]
        alpha = self.router(torch.zeros(n, device=self.router.device))
        n_cf = self.router.hard_split(alpha).cpu().numpy().astype(np.int64)
        gen_device = next(self.generator.parameters()).device
        text = sem_embeddings if self.generator.config.text_dim else None
        alpha_np = alpha.float().cpu().numpy()
        features = served_item_features(
            self.router,
            self.layout,
            self.budget,
            np.zeros(n),
            cf_codes,
            sem_codes,
            alpha_np,
            text,
            gen_device,
        )
        vectors = self.generator.item_vectors(features).float().cpu().numpy()
        return NewItemCodes(
            sem_codes=sem_codes,
            cf_codes=cf_codes,
            neighbours=neighbours,
            alpha=alpha_np,
            n_cf=n_cf,
            prefixes=code_sequences(cf_codes, sem_codes, n_cf, self.budget, self.layout),
            vectors=vectors,
            placement_order=placement_order(
                cf_ranked_codes(self.tokenizer, cf_codes),
                sem_ranked_codes(self.tokenizer, sem_x, sem_codes),
                n_cf,
                self.budget,
                self.layout,
            ),
        )
