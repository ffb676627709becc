"""psi_for_channel: the notebook API on planted channels."""

import numpy as np
import pytest
import torch

from polypsi.api import ChannelPSI, psi_for_channel
from polypsi.stats.synthetic import make_world, noise_channels, planted_channels

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def world():
    return make_world(np.random.default_rng(0), d=128, n_concepts=30, n_null_concepts=60)


def prompts(world):
    names = [world.text.concepts[i] for i in world.text.concept_id]
    return world.text.emb, names


def test_polysemantic_channel_scores_high_and_names_its_clusters(world):
    rng = np.random.default_rng(1)
    Z, y, truth = planted_channels(rng, world, 1, 2, separation=1.2)
    emb, names = prompts(world)
    r = psi_for_channel(Z[0], y[0], emb, names, world.text.null_emb, m=10)
    assert isinstance(r, ChannelPSI) and r.status == "ok"
    assert r.k_hat == 2 and len(r.assignments) == 50 and len(r.clusters) == 2
    assert min(r.S_hat, r.Q_hat, r.D_hat) > 0.95 and r.psi == pytest.approx(r.S_hat * r.Q_hat * r.D_hat)
    assert r.log_psi == pytest.approx(np.log(r.psi), abs=1e-9)
    # Each cluster is named after the concept it was planted from.
    for j, row in r.clusters.iterrows():
        members = truth[0][r.assignments == j]
        assert len(set(members)) == 1 and row["size"] == len(members)
        sims = world.concepts @ Z[0][r.assignments == j].mean(0)
        assert row.concept_1 == f"concept{int(np.argmax(sims))}"
    assert set(r.null_psi) >= {"S_hat", "Q_hat", "D_hat", "psi"}
    assert list(r.draws.draw) == list(range(11))


def test_structure_free_channel_is_not_flagged_polysemantic(world):
    Z, y = noise_channels(np.random.default_rng(2), 1, d=128, common=1.0)
    emb, names = prompts(world)
    r = psi_for_channel(Z[0], y[0], emb, names, world.text.null_emb, m=10)
    assert r.psi < 0.5


def test_options_reach_the_scorer(world):
    rng = np.random.default_rng(3)
    Z, y, _ = planted_channels(rng, world, 1, 3, separation=1.0)
    emb, _ = prompts(world)
    ids = world.text.concept_id  # integer concept ids work too
    a = psi_for_channel(Z[0], y[0], emb, ids, m=5, k_range=(2, 3), gap_level="prompt", seed=4)
    assert a.k_hat in (2, 3) and a.clusters.concept_1.str.fullmatch(r"\d+").all()
    b = psi_for_channel(Z[0], y[0], emb, ids, m=5, k_range=(2, 3), gap_level="prompt", seed=4, backend="sklearn",
                        n_init=3)
    assert a.k_hat == b.k_hat and a.S == pytest.approx(b.S, abs=1e-4)
    rot = psi_for_channel(Z[0], y[0], emb, ids, m=5, s_null="rotation", d_null="shuffle", gap_level="prompt")
    assert "low_null_sd" in rot.status  # both of the paper's literal nulls are degenerate here


def test_index_separates_a_polysemantic_channel_from_a_monosemantic_one(world):
    """The index of the notebook API: two planted concepts score above one concept, which sits near chance."""
    emb, names = prompts(world)
    Z2, y2, _ = planted_channels(np.random.default_rng(1), world, 1, 2, separation=1.2)
    Z1, y1, _ = planted_channels(np.random.default_rng(2), world, 1, 1, separation=1.2)
    act = np.linspace(2.0, 1.0, Z2.shape[1])
    poly = psi_for_channel(Z2[0], y2[0], emb, names, world.text.null_emb, m=10, activations=act)
    mono = psi_for_channel(Z1[0], y1[0], emb, names, world.text.null_emb, m=10)
    assert poly.index == pytest.approx(poly.S * poly.contrast - poly.index_chance)
    assert poly.index > 0.05 > mono.index and abs(mono.index) < 0.03
    assert poly.index_k > 1.5 and mono.index_k < 1.5
    assert poly.semanticlens > mono.semanticlens and np.isfinite(poly.monosemanticity)
    assert np.isnan(mono.monosemanticity)
    assert {"contrast", "index_k"} <= set(poly.draws.columns)
    layer = psi_for_channel(Z2[0], y2[0], emb, names, world.text.null_emb, m=10, activations=act, index_chance=0.01)
    assert layer.index == pytest.approx(poly.index + poly.index_chance - 0.01) and layer.index_chance == 0.01
    with pytest.raises(ValueError, match="one per embedding"):
        psi_for_channel(Z2[0], y2[0], emb, names, m=2, activations=act[:3])
