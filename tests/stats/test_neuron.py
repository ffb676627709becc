"""Scores on neuron embeddings: the embedder's clustering applied to the model's own view."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from polypsi.config import StatsConfig
from polypsi.stats.neuron import NEURON_COLUMNS, neuron_scores


def _units(rng, n_modes, K=24, d=16):
    """One unit: K examples around n_modes orthogonal directions, the class of each example = its mode."""
    centres = np.eye(d)[:n_modes] * 5
    mode = np.arange(K) % n_modes
    return centres[mode] + rng.normal(size=(K, d)) * 0.3, mode


def test_neuron_scores_match_scikit_learn_and_find_the_modes():
    rng = np.random.default_rng(0)
    built = [_units(rng, m) for m in (1, 2, 3)]
    Z = np.stack([z for z, _ in built])
    labels = np.stack([y for _, y in built])
    clip = np.stack([y for _, y in built])  # the embedder's clusters: the modes themselves
    Z[0] = np.abs(Z[0])  # one mode, all in one orthant
    dead = np.zeros_like(Z[:1])
    table, assign = neuron_scores(np.concatenate([Z, dead]), np.concatenate([labels, labels[:1]]),
                                  np.concatenate([clip, clip[:1]]), np.array([7, 8, 9, 10]),
                                  stats=StatsConfig(), seed=0, layer="l", threshold=0.5)
    assert list(table.columns) == ["channel", *NEURON_COLUMNS] and list(table.channel) == [7, 8, 9, 10]
    assert list(table.ne_k_hat[1:3]) == [2, 3] and list(table.foote_k[:3]) == [1, 2, 3]
    for i in (1, 2):
        unit = Z[i] / np.linalg.norm(Z[i], axis=1, keepdims=True)
        assert table.ne_S[i] == pytest.approx(silhouette_score(unit, assign[i], metric="cosine"), abs=1e-6)
        assert table.ne_Q[i] == pytest.approx(normalized_mutual_info_score(labels[i], assign[i]), abs=1e-9)
        assert table.ne_ari[i] == pytest.approx(adjusted_rand_score(clip[i], assign[i])) == pytest.approx(1.0)
    # a unit without a neuron embedding (zero weights) has no scores and no clusters
    assert table.iloc[3][NEURON_COLUMNS[:1] + NEURON_COLUMNS[2:]].isna().all() and (assign[3] == -1).all()
    # the same seeds give the same clusters
    again, assign2 = neuron_scores(Z, labels, clip, np.array([7, 8, 9]), stats=StatsConfig(), seed=0, layer="l",
                                   threshold=0.5)
    assert np.array_equal(assign2, assign[:3]) and again.ne_S.equals(table.ne_S[:3])


def test_neuron_scores_do_not_depend_on_chunks(monkeypatch):
    """Float64 copies and Foote's graphs are made a chunk of units at a time: any chunk size, the same table."""
    import polypsi.stats.neuron as neuron

    rng = np.random.default_rng(3)
    built = [_units(rng, 1 + i % 3) for i in range(7)]
    Z = np.stack([z for z, _ in built]).astype(np.float32)
    labels = np.stack([y for _, y in built])
    clip = rng.integers(0, 3, labels.shape)
    Z[4] = 0  # a unit without a neuron embedding
    Z[5, 3] = 0  # one example without one: the unit has no scores
    args = dict(stats=StatsConfig(), seed=0, layer="l", threshold=0.5)
    whole, assign = neuron_scores(Z, labels, clip, np.arange(7), **args)
    monkeypatch.setattr(neuron, "FOOTE_VALUES", Z.shape[1] * Z.shape[2] * 2)  # two units per Foote chunk
    parts, assign2 = neuron_scores(Z, labels, clip, np.arange(7), chunk=3, **args)
    pd.testing.assert_frame_equal(parts, whole)
    assert np.array_equal(assign2, assign) and whole.ne_S.isna().tolist() == [False] * 4 + [True, True, False]
