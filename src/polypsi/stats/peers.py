"""Three peers' polysemanticity scores, from the embeddings of a unit's top-K activating examples.

They are re-implemented from their published definitions (the first two checked against the
authors' own code: tests/stats/test_peers.py; benchmarks/bench_peers.py), so that they can be put
next to PSI on exactly the same patches and embeddings.

SemanticLens
    M. Dreyer, J. Berend, T. Labarta, J. Vielhaben, T. Wiegand, S. Lapuschkin, W. Samek,
    "Mechanistic understanding and validation of large AI models with SemanticLens",
    Nature Machine Intelligence (2025), doi:10.1038/s42256-025-01084-w, arXiv:2501.05398;
    Methods, human-interpretability measures "clarity" and "polysemanticity". The definitions
    below are those of the authors' reference implementation, which the paper points to:
    PyPI semanticlens 0.2.1 = github.com/jim-berend/semanticlens, semanticlens/scores.py
    (clarity_score, polysemanticity_score; unchanged since the 2025-04 "Adding core
    functionality" commit apart from logging and docstrings). The stored copies of the paper
    available when this was written did not show the Methods text, so no equation number is
    quoted here.

Monosemanticity Score (MS)
    M. Pach, S. Karthik, Q. Bouniot, S. Belongie, Z. Akata, "Sparse Autoencoders Learn
    Monosemantic Features in Vision-Language Models", NeurIPS 2025, arXiv:2504.02821
    (section "Monosemanticity Score"); authors' code github.com/ExplainableML/sae-for-vlm,
    metric.py (the restatement in Nasiri-Sarvi et al., "MonoLoss", arXiv:2602.12403,
    github.com/AtlasAnalyticsLab/MonoLoss sae/loss.py, uses the same min-max scaled ã).

Foote's feature clusters
    A. Foote, "Tackling Polysemanticity with Neuron Embeddings", arXiv:2411.08166 (2024), on the
    neuron embeddings of a unit's examples (polypsi.neuron_embeddings); the clustering as the
    author's code release describes it (github.com/alexjfoote/feature-clusters, README
    "Clustering"). See `foote_components`.

Inputs everywhere: Z [n, K, d] embeddings of the K examples of each of n units (unit norm; they
are re-normalised, which only guards rounding) and activations [n, K], the unit's activation on
each example (any reals; ties allowed). Rows may come in any order: every function first sorts
each unit's examples by activation, descending, ties broken by a fixed projection of the
embedding, so permuting examples together with their activations changes no output bit.
numpy arrays or torch tensors (any device; copied to the CPU in float64, K is small) go in,
float64 numpy arrays [n] come out.
"""

from __future__ import annotations

import numpy as np
import torch

from .kmeans import cluster_search
from .nulls import kmeans_uniforms

# Below this norm a mean direction (of all examples, or of a cluster) is taken as undefined.
_TINY = 1e-12


def _canonical(Z, activations) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 copies, each unit's examples sorted by activation (descending)."""
    Z = np.asarray(Z.detach().cpu() if isinstance(Z, torch.Tensor) else Z, dtype=np.float64)
    a = np.asarray(
        activations.detach().cpu() if isinstance(activations, torch.Tensor) else activations, dtype=np.float64
    )
    if Z.ndim != 3 or a.shape != Z.shape[:2]:
        raise ValueError(f"need Z [n, K, d] and activations [n, K]; got {Z.shape} and {a.shape}")
    if Z.shape[1] < 2:
        raise ValueError("need at least two examples per unit")
    if not (np.isfinite(Z).all() and np.isfinite(a).all()):
        raise ValueError("Z and activations must be finite")
    norm = np.linalg.norm(Z, axis=-1, keepdims=True)
    if (norm == 0).any():
        raise ValueError("an embedding is the zero vector (no direction, no cosine)")
    Z = Z / norm
    # The tie-break must depend on the example, not on its row, for permutation invariance;
    # examples equal in both keys are identical and interchangeable.
    probe = np.random.default_rng(0).standard_normal(Z.shape[-1])
    order = np.lexsort((Z @ probe, -a), axis=-1)
    return np.take_along_axis(Z, order[..., None], 1), np.take_along_axis(a, order, 1)


def _top_weights(a_sorted: np.ndarray, m: int) -> np.ndarray:
    """Weights [n, K] selecting the m highest activations; a tie straddling rank m shares the places.

    Equal to averaging over every order of the tied examples, so the input order never matters.
    """
    above = (a_sorted[:, None, :] > a_sorted[:, :, None]).sum(-1)  # examples ranked strictly before
    upto = (a_sorted[:, None, :] >= a_sorted[:, :, None]).sum(-1)  # ... and those tied with it
    return np.clip(np.minimum(upto, m) - above, 0, None) / (upto - above)


def semanticlens_clarity(Z) -> np.ndarray:
    """SemanticLens clarity [n]: mean pairwise cosine similarity of a unit's K example embeddings.

    clarity = 1/(K(K-1)) sum_{i != j} cos(z_i, z_j) = (K |mean_i z^_i|^2 - 1) / (K - 1), the form
    the authors compute (semanticlens/scores.py: clarity_score). In [-1/(K-1), 1]. No activation
    enters: the examples are the unit's top-activating ones, each counted once.
    """
    Zs, _ = _canonical(Z, np.zeros(np.shape(Z)[:2]))
    K = Zs.shape[1]
    G = Zs @ Zs.transpose(0, 2, 1)
    return (G.sum((1, 2)) - np.trace(G, axis1=1, axis2=2)) / (K * (K - 1))


def _kmeans_labels(G: torch.Tensor, k: int, n_init: int, random_state: int, max_iter: int) -> torch.Tensor:
    """Labels [n, K] of the lowest-inertia of n_init k-means++/Lloyd runs on Gram matrices G [n, K, K].

    One set of uniforms for every unit (like the package's single random_state), so a unit's
    partition does not depend on the rest of the batch.
    """
    u = torch.from_numpy(kmeans_uniforms(np.random.default_rng(random_state), 1, n_init, k)).to(G.dtype)
    res = cluster_search(G, u.unsqueeze(0).expand(len(G), -1, -1, -1, -1), [k], max_iter=max_iter, spherical=False)
    return res.labels[:, 0]


def semanticlens_polysemanticity(
    Z,
    activations,
    *,
    n_clusters: int = 2,
    n_init: int = 10,
    random_state: int = 123,
    max_iter: int = 300,
    singleton_fallback: bool = True,
    fallback_top: int = 10,
) -> np.ndarray:
    """SemanticLens polysemanticity [n]; higher = more polysemantic.

    Definition (Dreyer et al. 2025, Methods "polysemanticity"; semanticlens/scores.py
    polysemanticity_score): k-means with ``n_clusters`` = 2 clusters (``n_init`` = 10
    restarts, k-means++ seeding, seed ``random_state`` = 123) on the embeddings of the unit's
    concept examples, then one minus the clarity of the cluster centroids c_1..c_k:

        poly = 1 - 1/(k(k-1)) sum_{i != j} cos(c_i, c_j);   for k = 2: poly = 1 - cos(c_1, c_2),

    in [0, 2] (the package docstring says [0, 1]; centroids more than 90 degrees apart give > 1).
    There is no activation weighting in the definition: activations only pick (upstream) and
    rank the concept examples, and the ranking matters here only for the fallback.

    Fallback (the package's ``replace_empty_clusters=True``, its default): when the kept
    partition has a cluster with fewer than 2 members, 2-means has split off an outlier and
    the centroid cosine would only measure that outlier, so the score becomes

        poly = 1 - mean_{i < min(fallback_top, K)} cos(mean_j z_j, z_i)

    over the ``fallback_top`` = 10 highest-activating examples (the package takes the first
    10 rows of its concept tensor, which is sorted by activation). A tie in activation across
    the 10th place is shared (averaged over orders). All-identical examples land here and
    score 0, for any activations.

    Differences from the package, all outside the definition: k-means is polypsi's batched
    Gram-matrix Lloyd (same objective, restarts, and scikit-learn's greedy k-means++ rule;
    polypsi.stats.kmeans) driven by its own uniforms from ``random_state``, so on
    unstructured examples it can keep another local optimum than scikit-learn's KMeans with
    random_state=123; it runs on the unit-normalised embeddings (the package's pipeline feeds
    raw CLIP features). NaN, with reason: a centroid, or for the fallback the mean of all
    examples, of norm < 1e-12 (its direction, hence the cosine, is undefined; the package
    would return a number computed from the zero vector).

    Deterministic: the same random_state is used for every unit and the examples are put in
    canonical order first, so a unit's score depends on neither its batch nor its row order.
    """
    Zs, a = _canonical(Z, activations)
    K = Zs.shape[1]
    if not 2 <= n_clusters <= K:
        raise ValueError(f"n_clusters must be in [2, K={K}]")
    G = torch.from_numpy(Zs @ Zs.transpose(0, 2, 1))
    labels = _kmeans_labels(G, n_clusters, n_init, random_state, max_iter)
    A = torch.nn.functional.one_hot(labels, n_clusters).to(G.dtype)  # [n, K, k]
    counts = A.sum(1).numpy()
    M = (A.transpose(1, 2) @ G @ A).numpy()  # s_i . s_j for the clusters' summed vectors
    norm = np.sqrt(np.clip(np.diagonal(M, axis1=1, axis2=2), 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = M / (norm[:, :, None] * norm[:, None, :])
    off = ~np.eye(n_clusters, dtype=bool)
    poly = 1.0 - cos[:, off].mean(-1)
    poly[(norm / counts < _TINY).any(-1)] = np.nan
    if singleton_fallback:
        small = counts.min(-1) < 2
        if small.any():
            Gs = G.numpy()[small]
            g1 = Gs.sum(-1)  # z_i . sum_j z_j
            total = np.sqrt(np.clip(g1.sum(-1), 0, None))  # |sum_j z_j|
            w = _top_weights(a[small], min(fallback_top, K))
            with np.errstate(divide="ignore", invalid="ignore"):
                c = g1 / total[:, None]
                val = 1.0 - (w * c).sum(-1) / w.sum(-1)
            val[total / K < _TINY] = np.nan
            poly[small] = val
    return poly


def _minmax(a: np.ndarray, act_min, act_max) -> np.ndarray:
    lo = a.min(-1) if act_min is None else np.broadcast_to(np.asarray(act_min, dtype=np.float64), a.shape[:1])
    hi = a.max(-1) if act_max is None else np.broadcast_to(np.asarray(act_max, dtype=np.float64), a.shape[:1])
    if (lo > a.min(-1)).any() or (hi < a.max(-1)).any():
        raise ValueError("act_min/act_max must bound the given activations (they are the min/max over a superset)")
    span = hi - lo
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span[:, None] > 0, (a - lo[:, None]) / span[:, None], np.nan)


def monosemanticity_score(Z, activations, *, act_min=None, act_max=None) -> np.ndarray:
    """Raw MonoSemanticity score MS [n] of Pach et al. 2025; higher = more MONOsemantic.

    Definition (Pach et al., section "Monosemanticity Score"; sae-for-vlm metric.py): with the
    unit's activations min-max scaled, ã_n = (a_n - min a) / (max a - min a) in [0, 1], pair
    weights r_nm = ã_n ã_m and cosine similarities s_nm of the examples' embeddings,

        MS = sum_{n < m} r_nm s_nm / sum_{n < m} r_nm,

    an activation-weighted mean pairwise cosine in [-1, 1] (self-pairs excluded).

    The paper sums over ALL N images of a dataset (ImageNet val) with min and max over those N;
    here only the unit's top-K examples exist, and by default they are the image set (min and
    max over the K, so the K-th example gets weight 0). ``act_min``/``act_max`` (scalar or [n])
    override them, e.g. with the unit's minimum over the whole dataset, which gives the paper's
    weights for the pairs that are kept. They must bound the given activations.

    NaN, with reason (as the authors' code, which returns NaN for such "dead" neurons): max ==
    min (all activations equal: the scaling is 0/0), or sum_{n<m} r_nm = 0 (fewer than two
    examples above the minimum, no weighted pair). Passing an act_min below the activations
    makes an all-equal unit well defined (all ã = 1, MS = SemanticLens clarity).
    """
    Zs, a = _canonical(Z, activations)
    w = _minmax(a, act_min, act_max)
    K = Zs.shape[1]
    iu = np.triu_indices(K, 1)
    G = (Zs @ Zs.transpose(0, 2, 1))[:, iu[0], iu[1]]  # [n, K(K-1)/2]
    r = w[:, iu[0]] * w[:, iu[1]]
    W = r.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(W > 0, (r * G).sum(-1) / W, np.nan)


def pach_polysemanticity(Z, activations, *, act_min=None, act_max=None) -> np.ndarray:
    """1 - MS [n] (Pach et al. 2025); higher = more polysemantic, 0 = all weighted examples identical.

    1 - MS is the same activation-weighted mean over pairs of the cosine distance
    1 - cos = |z_n - z_m|^2 / 2 (unit vectors): a weighted semantic spread in [0, 2], on the
    scale of SemanticLens' 1 - clarity (clarity is MS with equal weights). It is an affine,
    order-reversing map of MS, so rank statistics only change sign; -MS would do the same
    but put "identical examples" at -1 instead of 0. NaN where MS is NaN.
    """
    return 1.0 - monosemanticity_score(Z, activations, act_min=act_min, act_max=act_max)


def foote_components(Z, threshold: float, *, min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Foote's feature clusters of each unit: (count [n], labels [n, K]); a higher count = more polysemantic.

    Definition (Foote 2024; the author's code release, README "Clustering": "I compute the pairwise
    cosine similarity between the [neuron] embeddings and create edges between pairs with a
    similarity above a threshold. I then identify the connected components of the similarity
    graph. Each connected component forms a feature cluster."): nodes are the unit's K examples,
    an edge joins i != j when cos(z_i, z_j) > ``threshold`` (strictly above), and the clusters are
    the graph's connected components, so membership is transitive (a chain of similar examples is
    one cluster even where its ends are not similar). The paper proposes the clusters as a proxy
    for a neuron's polysemanticity; the count here is that proxy. A component of fewer than
    ``min_size`` examples is not counted (default 1: every component, singletons included, as
    described; the description sets no minimum size).

    ``threshold`` has no default: the stored text of the paper ends before its method section,
    and the code release states no clustering threshold (its app's per-layer thresholds, 0.5 for
    GPT-2 layer 0 down to 0.05 from layer 5, are for finding similar features across neurons).
    The graph, and so the count, change with it: a caller must choose and report it.

    Labels number each unit's components 0, 1, ... in the order of their first example's row
    (a permutation of the examples permutes the labels with them and leaves the count unchanged).
    An example whose embedding is the zero vector has no direction and no cosine: no edge, it is
    its own component. numpy arrays or torch tensors in; int64 numpy arrays out.
    """
    Z = np.asarray(Z.detach().cpu() if isinstance(Z, torch.Tensor) else Z, dtype=np.float64)
    if Z.ndim != 3:
        raise ValueError(f"need Z [n, K, d]; got shape {Z.shape}")
    if not np.isfinite(Z).all():
        raise ValueError("Z must be finite")
    if min_size < 1:
        raise ValueError("min_size must be at least 1")
    n, K, _ = Z.shape
    norm = np.linalg.norm(Z, axis=-1, keepdims=True)
    U = np.divide(Z, norm, out=np.zeros_like(Z), where=norm > 0)
    cos = U @ U.transpose(0, 2, 1)
    adj = (cos > threshold) & (norm > 0) & (norm > 0).transpose(0, 2, 1)
    adj |= np.eye(K, dtype=bool)  # every example reaches itself
    # Label propagation: each example takes the smallest index among itself and its neighbours until
    # nothing changes; then each example holds the smallest index of its component (at most K rounds).
    root = np.broadcast_to(np.arange(K), (n, K)).copy()
    while True:
        new = np.where(adj, root[:, None, :], K).min(-1)
        if np.array_equal(new, root):
            break
        root = new
    # The smallest index of a component is its first row: number the roots in row order.
    is_root = root == np.arange(K)
    ids = np.cumsum(is_root, axis=1) - 1
    labels = np.take_along_axis(ids, root, 1).astype(np.int64)
    sizes = np.zeros((n, K), np.int64)
    np.add.at(sizes, (np.repeat(np.arange(n), K), labels.ravel()), 1)
    return (sizes >= min_size).sum(-1).astype(np.int64), labels
