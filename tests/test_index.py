"""The index: chance level from the live channels' reference null draws; it separates different concepts from
one concept split by context; null neurons sit at 0; index.method psi is the paper's PSI."""

import numpy as np
import pandas as pd
import pytest
import torch

from polypsi.calibration import calibrate
from polypsi.config import CalibrationConfig, IndexConfig, NullConfig, StatsConfig
from polypsi.index import add_index, index_chance
from polypsi.report.stats import auroc
from polypsi.stats import score_channels
from polypsi.stats.synthetic import _unit, make_world, noise_channels, planted_channels

torch.set_num_threads(1)
M = 12


def test_chance_is_the_median_of_the_live_channels_reference_draws():
    rows = [(c, m, 0.5, 1.0 * m + 100 * c) for c in (0, 1) for m in range(M + 1)]
    scores = pd.DataFrame(rows, columns=["channel", "draw", "S", "contrast"])
    # Draw 0 (real) and draw M (the held-out null neuron) never enter; channel 1 is dead.
    assert index_chance(scores, M, True, np.array([0])) == pytest.approx(0.5 * np.median(np.arange(1, M)))
    assert index_chance(scores, M, False, np.array([0])) == pytest.approx(0.5 * np.median(np.arange(1, M + 1)))
    assert np.isnan(index_chance(scores, M, True, np.array([], int)))
    table = pd.DataFrame({"S": [0.5, 0.4], "contrast": [0.2, 0.0], "psi": [0.3, np.nan],
                          "status": ["ok", "dead: top activation <= 0"]})
    out = add_index(table, 0.01, IndexConfig())
    assert out["index"].iloc[0] == pytest.approx(0.09) and np.isnan(out["index"].iloc[1])
    assert (out["index_chance"] == 0.01).all()
    assert add_index(table, 0.01, IndexConfig(method="psi"))["index"].iloc[0] == 0.3


def split_by_context(rng, world, n, K=50, separation=1.0, context=1.5):
    """n monosemantic channels: one concept each, its patches split 25/25 by a context direction that no prompt names."""
    d = world.concepts.shape[1]
    Z = np.empty((n, K, d), np.float32)
    for i in range(n):
        c = world.concepts[rng.integers(len(world.concepts))]
        ctx = _unit(rng.standard_normal((2, d)))
        member = np.repeat([0, 1], K // 2)
        x = world.common + separation * c + context * ctx[member] + rng.standard_normal((K, d)) / np.sqrt(d)
        Z[i] = _unit(x)
    return Z, np.repeat([[0, 1]], K // 2, axis=1).reshape(1, -1).repeat(n, 0)


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    world = make_world(rng, d=128, n_concepts=30, n_null_concepts=60)
    poly, y_poly, _ = planted_channels(rng, world, 10, 2, separation=1.0)
    mono, y_mono = split_by_context(rng, world, 10)
    noise, y_noise = noise_channels(rng, 10, d=128, common=1.0)
    Z = np.concatenate([poly, mono, noise])
    y = np.concatenate([y_poly, y_mono, y_noise])
    ch = np.arange(30)
    scores = score_channels(Z, y, ch, world.text, list(range(M + 1)), StatsConfig(), NullConfig(m=M), "layer4")
    psi, null = calibrate(scores, M, CalibrationConfig())
    chance = index_chance(scores, M, True, ch)
    return add_index(psi.assign(status="ok"), chance, IndexConfig()), add_index(null.assign(status="ok"), chance,
                                                                                IndexConfig())


def test_different_concepts_rank_above_one_concept_split_by_context(scored):
    psi, _ = scored
    poly, mono, noise = psi.iloc[:10], psi.iloc[10:20], psi.iloc[20:]
    assert auroc(poly["index"], mono["index"]) == 1.0
    assert auroc(poly["index"], noise["index"]) == 1.0
    assert (mono["S"] > 0.2).all()  # the context split is a real, separable split ...
    assert (mono["index_k"] < 1.5).all() and (poly["index_k"] > 1.5).all()  # ... of one named concept
    assert mono["index"].median() < 0.5 * poly["index"].median() and (poly["index"] > 0.05).all()
    assert auroc(poly["psi"], mono["psi"]) < 0.8  # the paper's PSI calls both kinds polysemantic (~0.999)


def test_null_neurons_sit_at_the_chance_level(scored):
    _, null = scored
    assert abs(float(np.median(null["index"]))) < 0.03
