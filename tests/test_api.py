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
