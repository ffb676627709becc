"""Notebook API: PSI and its components for one channel from plain arrays.

    from polypsi.api import psi_for_channel
    r = psi_for_channel(patch_emb, labels, prompt_emb, prompt_concepts, null_prompt_emb)
    r.index, r.psi, r.S_hat, r.k_hat, r.clusters

A thin wrapper over polypsi.stats.score_channels (draws 0..m) and polypsi.calibration.calibrate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .calibration import calibrate, channels_only
from .config import CalibrationConfig, NullConfig, StatsConfig
from .index import index_chance as own_chance
from .index import raw_index
from .stats import TextBank, score_channels
from .stats.peers import pach_polysemanticity, semanticlens_polysemanticity


@dataclass
class ChannelPSI:
    S: float
    Q: float
    D: float
    S_hat: float
    Q_hat: float
    D_hat: float
    psi: float
    log_psi: float
    k_hat: int
    status: str
    index: float  # S x contrast - index_chance (docs/index.md)
    index_chance: float  # the chance level subtracted (by default: median over this channel's null draws)
    contrast: float
    index_k: float  # effective number of named concepts
    semanticlens: float  # SemanticLens polysemanticity (needs no activations)
    monosemanticity: float  # 1 - Pach et al.'s MS; NaN unless activations are given
    assignments: np.ndarray  # [K] cluster of each patch (0 = largest cluster)
    clusters: pd.DataFrame  # one row per cluster: size, silhouette, concept_1, concept_2, gap, similarity_1
    null_psi: dict  # the held-out null neuron's S, Q, D, hats and PSI
    draws: pd.DataFrame = field(repr=False)  # raw S, Q, D, k_hat of every draw (0 = real)


def _concept_ids(concepts) -> tuple[np.ndarray, list[str]]:
    concepts = list(concepts)
    if all(isinstance(c, (int, np.integer)) for c in concepts):
        ids = np.asarray(concepts, dtype=np.int64)
        return ids, [str(i) for i in range(int(ids.max()) + 1)]
    names = list(dict.fromkeys(str(c) for c in concepts))
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[str(c)] for c in concepts], dtype=np.int64), names


def psi_for_channel(
    embeddings: np.ndarray,
    labels: Sequence[int],
    prompt_embeddings: np.ndarray,
    prompt_concepts: Sequence,
    null_prompt_embeddings: np.ndarray | None = None,
    *,
    null_prompt_concepts: Sequence | None = None,
    m: int = 20,
    seed: int = 0,
    s_null: str = "gaussian",
    d_null: str | None = None,
    gap_level: str = "concept",
    k_range: tuple[int, int] = (2, 5),
    n_init: int = 10,
    kmeans: str = "spherical",
    backend: str = "torch",
    activations: Sequence[float] | None = None,
    index_chance: float | None = None,
) -> ChannelPSI:
    """PSI of one channel from its K patch embeddings [K, d], their images' class labels [K] and a prompt set.

    prompt_concepts names (or numbers) the concept of each prompt; prompts of one concept are
    averaged at gap_level="concept". d_null defaults to "unrelated_prompts" when null prompt
    embeddings are given (each null prompt its own concept unless null_prompt_concepts says
    otherwise) and to "random_directions" otherwise. Embeddings are L2-normalised here.

    index: S x contrast - index_chance. The workflow's chance level is per layer (the median over
    its live channels' null draws; pass a psi table's `index_chance` to use it); by default it is
    the median of this channel's own reference draws, which keep its covariance and so sit higher
    for a clearly split channel than the layer's level does. activations [K]: the patches' activations (Pach et al.'s score needs them; without
    them the embeddings' rows are taken as ranked, best first).
    """
    Z = np.asarray(embeddings, dtype=np.float64)
    Z = (Z / np.linalg.norm(Z, axis=1, keepdims=True)).astype(np.float32)[None]
    ids, names = _concept_ids(prompt_concepts)
    # without activations the rows' order is the ranking (SemanticLens' fallback uses the top 10)
    act = np.arange(Z.shape[1], 0, -1.0) if activations is None else np.asarray(activations, dtype=np.float64)
    if act.shape != (Z.shape[1],):
        raise ValueError(f"activations has shape {act.shape}; expected one per embedding, ({Z.shape[1]},)")
    P = np.asarray(prompt_embeddings, dtype=np.float32)
    if null_prompt_embeddings is None:
        null_emb, null_ids, null_names = np.zeros((0, P.shape[1]), np.float32), np.zeros(0, np.int64), []
    else:
        null_emb = np.asarray(null_prompt_embeddings, dtype=np.float32)
        concepts0 = range(len(null_emb)) if null_prompt_concepts is None else null_prompt_concepts
        null_ids, null_names = _concept_ids(concepts0)
    if d_null is None:
        d_null = "unrelated_prompts" if len(null_emb) else "random_directions"
    text = TextBank(P, ids, names, null_emb, null_ids, null_names)
    stats = StatsConfig(k_min=k_range[0], k_max=k_range[1], n_init=n_init, gap_level=gap_level,
                        kmeans=kmeans, backend=backend)
    nulls = NullConfig(m=m, seed=seed, s_null=s_null, d_null=d_null)
    y = np.asarray(labels, dtype=np.int64)[None]
    scores = score_channels(Z, y, np.array([0]), text, list(range(m + 1)), stats, nulls, layer="api",
                            activations=None if activations is None else act[None])
    psi, null_psi = calibrate(scores, m, CalibrationConfig())
    psi, null_psi = channels_only(psi), channels_only(null_psi)  # the channel's own rows, never an OR-unit's
    row = psi.iloc[0]
    real = scores[scores.draw == 0].iloc[0]
    if index_chance is None:
        index_chance = own_chance(scores, m, CalibrationConfig().holdout_null_neurons, np.array([0]))
    semanticlens = float(semanticlens_polysemanticity(Z, act[None])[0])
    mono = float(pach_polysemanticity(Z, act[None])[0]) if activations is not None else float("nan")
    clusters = pd.DataFrame({
        "size": real.cluster_size, "silhouette": real.cluster_silhouette,
        "concept_1": real.cluster_concept_1, "concept_2": real.cluster_concept_2,
        "gap": real.cluster_gap, "similarity_1": real.cluster_similarity_1,
    })
    return ChannelPSI(
        S=float(row.S), Q=float(row.Q), D=float(row.D),
        S_hat=float(row.S_hat), Q_hat=float(row.Q_hat), D_hat=float(row.D_hat),
        psi=float(row.psi), log_psi=float(row.log_psi), k_hat=int(row.k_hat), status=str(row.status),
        index=float(raw_index(real.to_frame().T).iloc[0] - index_chance), index_chance=float(index_chance),
        contrast=float(real.contrast), index_k=float(real.index_k), semanticlens=semanticlens, monosemanticity=mono,
        assignments=np.asarray(real.assignments), clusters=clusters,
        null_psi=null_psi.iloc[0].to_dict() if len(null_psi) else {},
        draws=scores[["draw", "S", "Q", "D", "k_hat", "contrast", "index_k"]].reset_index(drop=True),
    )
