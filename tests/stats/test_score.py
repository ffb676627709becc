"""score_channels: interface, seeding, backends, planted structure and structure-free calibration."""

import numpy as np
import pandas as pd
import pytest
import torch

from polypsi.calibration import calibrate
from polypsi.config import CalibrationConfig, NullConfig, StatsConfig
from polypsi.stats import CLUSTER_COLUMNS, SCORE_COLUMNS, TextBank, score_channels
from polypsi.stats.batched import CHUNK_GRAM_ENTRIES, DEVICE_CHUNK_BYTES, chunk_size
from polypsi.shards import channel_shard, draws_of
from polypsi.stats.synthetic import make_world, noise_channels, planted_channels

torch.set_num_threads(1)
M = 20
ALL = list(range(M + 1))


@pytest.fixture(scope="module")
def world():
    return make_world(np.random.default_rng(0), d=512, n_concepts=40, n_null_concepts=80)


@pytest.fixture(scope="module")
def mixed(world):
    """10 channels: planted 2..5 clusters at several separations, and noise."""
    rng = np.random.default_rng(1)
    parts = [planted_channels(rng, world, 2, k, separation=s)[:2] for k, s in [(2, 1.0), (3, 0.5), (5, 0.8), (4, 0.3)]]
    parts.append(noise_channels(rng, 2))
    Z = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return Z, y, np.arange(100, 110)


def run(world, Z, y, ch, draw, activations=None, **kw):
    stats = StatsConfig(**{k: v for k, v in kw.items() if k in StatsConfig.model_fields})
    nulls = NullConfig(m=M, **{k: v for k, v in kw.items() if k in NullConfig.model_fields})
    return score_channels(Z, y, ch, world.text, draw, stats, nulls, layer="layer4", activations=activations)


def activations(rng, shape):
    """Descending activations of ranked patches, some of them negative (clipped to weight 0)."""
    return np.sort(rng.uniform(-0.2, 3.0, shape), axis=-1)[..., ::-1]


def test_columns_and_cluster_details(world, mixed):
    Z, y, ch = mixed
    real = run(world, Z, y, ch, 0)
    assert list(real.columns) == SCORE_COLUMNS + CLUSTER_COLUMNS
    assert (real.draw == 0).all() and list(real.channel) == list(ch)
    assert real.S.between(0, 1).all() and real.Q.between(0, 1).all() and (real.D >= 0).all()
    for _, r in real.iterrows():
        k = r.k_hat
        assert len(r.assignments) == 50 and sorted(set(r.assignments)) == list(range(k))
        sizes = np.bincount(r.assignments)
        assert list(sizes) == list(r.cluster_size) and list(sizes) == sorted(sizes, reverse=True)
        for col in CLUSTER_COLUMNS[2:]:
            assert len(r[col]) == k
        assert set(r.cluster_concept_1) <= set(world.text.concepts)
        assert np.mean(r.cluster_gap) == pytest.approx(r.D, abs=1e-6)
        assert np.average(r.cluster_silhouette, weights=r.cluster_size) == pytest.approx(r.S, abs=1e-5)
    null = run(world, Z, y, ch, 4)
    assert list(null.columns) == SCORE_COLUMNS and (null.draw == 4).all()
    both = run(world, Z, y, ch, [0, 4])
    pd.testing.assert_frame_equal(both[both.draw == 4][SCORE_COLUMNS].reset_index(drop=True), null)


def test_results_do_not_depend_on_shards_or_chunks(world, mixed):
    """Bit for bit: the workflow's channel shards x draw shards, and other chunk sizes, give one table."""
    Z, y, ch = mixed
    stats, nulls = StatsConfig(), NullConfig(m=M)

    def table(parts):
        return pd.concat(parts).sort_values(["draw", "channel"]).reset_index(drop=True)[SCORE_COLUMNS]

    whole = table([run(world, Z, y, ch, ALL)])
    for n_ch, n_dr in ((3, 1), (1, 2), (2, 3)):
        parts = []
        for cs in range(n_ch):
            idx = np.flatnonzero(np.isin(ch, channel_shard(ch, cs, n_ch)))
            for ds in range(n_dr):
                parts.append(run(world, Z[idx], y[idx], ch[idx], draws_of(ds, n_dr, M)))
        pd.testing.assert_frame_equal(table(parts), whole, check_exact=True, obj=f"{n_ch} x {n_dr} shards")
    for chunk in (3,):
        small = score_channels(Z, y, ch, world.text, ALL, stats, nulls, "layer4", chunk_units=chunk)
        pd.testing.assert_frame_equal(table([small]), whole, check_exact=True, obj=f"chunk_units {chunk}")


def test_seeded_by_seed_layer_channel_and_draw(world, mixed):
    Z, y, ch = mixed
    a = run(world, Z, y, ch, 2)
    pd.testing.assert_frame_equal(a, run(world, Z, y, ch, 2))
    for other in (run(world, Z, y, ch, 2, seed=1), run(world, Z, y, ch, 3)):
        for col in ("S", "Q", "D"):  # every null statistic depends on the seed and on the draw
            assert not np.array_equal(a[col].to_numpy(), other[col].to_numpy()), col
    other = score_channels(Z, y, ch, world.text, 2, StatsConfig(), NullConfig(m=M), layer="layer3")
    assert not np.array_equal(a.Q.values, other.Q.values)


def test_input_errors_name_the_problem(world, mixed):
    Z, y, ch = mixed
    with pytest.raises(ValueError, match="outside 0..nulls.m"):
        run(world, Z, y, ch, M + 1)
    bad = Z.copy()
    bad[3] *= 2
    with pytest.raises(ValueError, match="channel 103: patch embeddings are not L2-normalised"):
        run(world, bad, y, ch, 0)
    with pytest.raises(ValueError, match="labels must be"):
        run(world, Z, y[:, :10], ch, 0)
    with pytest.raises(ValueError, match="K=5 patches"):
        run(world, Z[:, :5], y[:, :5], ch, 0)
    no_null = TextBank(world.text.emb, world.text.concept_id, world.text.concepts, np.zeros((0, 512)), [], [])
    with pytest.raises(ValueError, match="unrelated-domain prompt set has 0 concepts"):
        score_channels(Z, y, ch, no_null, 1, StatsConfig(), NullConfig(m=M), "layer4")


@pytest.mark.parametrize("kmeans", ["spherical", "euclidean"])
def test_torch_scorer_agrees_with_sklearn_reference(world, kmeans):
    rng = np.random.default_rng(2)
    Z, y, _ = planted_channels(rng, world, 4, 3, separation=1.0, label_noise=0.3)
    ch = np.arange(4)
    act = activations(rng, y.shape)
    fast = run(world, Z, y, ch, [0, 1, 2], act, kmeans=kmeans)
    ref = run(world, Z, y, ch, [0, 1, 2], act, kmeans=kmeans, backend="sklearn")
    pd.testing.assert_frame_equal(fast[["channel", "draw"]], ref[["channel", "draw"]])
    real = fast.draw == 0
    np.testing.assert_array_equal(fast.k_hat[real], ref.k_hat[real])
    np.testing.assert_allclose(fast.S[real], ref.S[real], atol=1e-4)
    np.testing.assert_allclose(fast.Q, ref.Q, atol=1e-9)  # same permutations of the same clusters
    np.testing.assert_allclose(fast.D, ref.D, atol=1e-5)  # same unrelated-prompt subsets
    np.testing.assert_allclose(fast.contrast[real], ref.contrast[real], atol=1e-5)
    np.testing.assert_allclose(fast.index_k[real], ref.index_k[real], atol=1e-9)
    assert (fast.contrast[real] > 0.05).all()  # three planted concepts: a clear contrast
    # Null draws: the same structure-free samples; k-means restarts may settle differently on them.
    assert abs(fast.S[~real].mean() - ref.S[~real].mean()) < 0.01
    r0, f0 = ref[ref.draw == 0], fast[fast.draw == 0]
    assert list(r0.assignments) == list(f0.assignments)
    assert list(r0.cluster_concept_1) == list(f0.cluster_concept_1)
    for a, b in zip(r0.cluster_silhouette, f0.cluster_silhouette):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("d_null,s_null", [("random_directions", "gaussian"), ("random_directions", "rotation"),
                                           ("shuffle", "gaussian")])
def test_other_nulls_agree_with_reference(world, d_null, s_null):
    rng = np.random.default_rng(3)
    Z, y, _ = planted_channels(rng, world, 2, 2, separation=1.2)
    kw = dict(d_null=d_null, s_null=s_null, n_init=3)
    fast = run(world, Z, y, np.arange(2), [1, 2], **kw)
    ref = run(world, Z, y, np.arange(2), [1, 2], backend="sklearn", **kw)
    np.testing.assert_allclose(fast.Q, ref.Q, atol=1e-9)
    if d_null == "shuffle":
        np.testing.assert_allclose(fast.D, ref.D, atol=1e-5)
    else:  # D of a clustered structure-free sample: equal when both backends pick the same clusters
        same = (fast.k_hat == ref.k_hat).to_numpy() if s_null == "gaussian" else slice(None)
        assert abs(fast.D.mean() - ref.D.mean()) < 0.01
        if s_null == "gaussian":
            np.testing.assert_allclose(fast.D[same], ref.D[same], atol=2e-3)
    # The index's null is the same structure-free sample, clustered alike when K-hat agrees.
    same = (fast.k_hat == ref.k_hat).to_numpy() if s_null == "gaussian" else slice(None)
    assert abs(fast.contrast.mean() - ref.contrast.mean()) < 0.02
    if s_null == "gaussian":
        np.testing.assert_allclose(fast.contrast[same], ref.contrast[same], atol=2e-3)
    # Shares by activation: null patch i takes real patch i's weight in both backends. Row by row they differ
    # by more, as a patch that k-means (float32 here, float64 there) puts in the other cluster takes its weight.
    act = activations(rng, y.shape)
    fast_w = run(world, Z, y, np.arange(2), [1, 2], act, **kw)
    ref_w = run(world, Z, y, np.arange(2), [1, 2], act, backend="sklearn", **kw)
    assert abs(fast_w.contrast.mean() - ref_w.contrast.mean()) < 0.02
    assert not np.allclose(fast_w.contrast, fast.contrast)


def test_activations_weigh_cluster_shares_only(world):
    """Activations change the contrast and effective concepts (shares by response mass), nothing else; equal
    activations are counting; a weakly activating mode weighs little."""
    rng = np.random.default_rng(6)
    Z, y, _ = planted_channels(rng, world, 3, 2, separation=1.2)
    ch, draws = np.arange(3), [0, 1, 2]
    count = run(world, Z, y, ch, draws)
    flat = run(world, Z, y, ch, draws, np.full(y.shape, 2.5))
    pd.testing.assert_frame_equal(count, flat)
    real = count[count.draw == 0]
    weak = np.ones(y.shape)  # the second-numbered cluster of each channel responds at a tenth
    for i, a in enumerate(real.assignments):
        weak[i, np.asarray(a) == 1] = 0.1
    w = run(world, Z, y, ch, draws, weak)
    cols = [c for c in count.columns if c not in ("contrast", "index_k")]
    pd.testing.assert_frame_equal(count[cols], w[cols])
    assert (w.contrast[w.draw == 0].to_numpy() < 0.5 * real.contrast.to_numpy()).all()
    assert (w.index_k[w.draw == 0] < real.index_k).all()
    with pytest.raises(ValueError, match="activations must be"):
        run(world, Z, y, ch, 0, weak[:, :3])
    with pytest.raises(ValueError, match="channel 1: patch activations contain NaN"):
        run(world, Z, y, ch, 0, np.where(np.arange(3)[:, None] == 1, np.nan, weak))


def test_planted_clusters_recover_k_hat(world):
    rng = np.random.default_rng(4)
    hits = []
    for k in (2, 3, 4, 5):
        Z, y, truth = planted_channels(rng, world, 25, k, separation=1.2)
        res = run(world, Z, y, np.arange(25), 0)
        hits += list(res.k_hat == k)
    assert np.mean(hits) >= 0.95


@pytest.fixture(scope="module")
def separation_series(world):
    rng = np.random.default_rng(5)
    out = {}
    for sep in (0.0, 0.25, 0.5, 1.0):
        Z, y, _ = planted_channels(rng, world, 16, 3, separation=sep, label_noise=0.2)
        if sep == 0.0:
            y = rng.integers(0, 10, y.shape)  # nothing to align with
        scores = run(world, Z, y, np.arange(16), ALL)
        out[sep] = calibrate(scores, M, CalibrationConfig())[0]
    return out


def test_s_hat_and_psi_rise_with_separation(separation_series):
    med = pd.DataFrame({s: p[["S", "S_hat", "psi", "log_psi"]].median() for s, p in separation_series.items()}).T
    assert med.S.is_monotonic_increasing and med.log_psi.is_monotonic_increasing
    assert med.S_hat.iloc[-1] > 0.99 and med.psi.iloc[-1] > 0.9
    assert med.S_hat.iloc[0] < 0.8 and med.psi.iloc[0] < 0.3


@pytest.fixture(scope="module")
def structure_free(world):
    """Pure noise with random labels; the world's prompts name nothing in it."""
    Z, y = noise_channels(np.random.default_rng(6), 60, decay=0.3, common=1.0)
    scores = run(world, Z, y, np.arange(60), ALL)
    return scores, calibrate(scores, M, CalibrationConfig())


def test_structure_free_hats_are_centred(structure_free):
    _, (psi, null_psi) = structure_free
    for table in (psi, null_psi):
        for c in ("S_hat", "Q_hat", "D_hat"):
            assert abs(table[c].median() - 0.5) < 0.12, (c, table[c].median())
        # Each hat spreads around 0.5, and the median of a product of three is a little below 0.5^3.
        assert 0.07 < table.psi.median() < 0.16
        assert table.log_psi.median() == pytest.approx(np.log(0.125), abs=0.5)


def test_default_nulls_are_not_degenerate(structure_free):
    scores, (psi, _) = structure_free
    assert (psi.status == "ok").all()
    tol = CalibrationConfig().sd_tol
    for c in ("S", "Q", "D"):
        assert psi[f"{c}_sd"].min() > 5 * tol
        # The null spread is comparable to how much the real value varies between noise channels.
        assert psi[f"{c}_sd"].median() > 0.3 * psi[c].std()


def test_rotation_null_is_degenerate(world):
    rng = np.random.default_rng(7)
    Z, y, _ = planted_channels(rng, world, 8, 3, separation=1.0)
    ch = np.arange(8)
    rot = calibrate(run(world, Z, y, ch, ALL, s_null="rotation"), M, CalibrationConfig())[0]
    gau = calibrate(run(world, Z, y, ch, ALL), M, CalibrationConfig())[0]
    # Rotations keep every cosine: the null S is the real S up to k-means restart noise (none here).
    assert (rot.S_sd < 1e-6).all() and np.allclose(rot.S, rot.S_mu, atol=1e-6)
    assert rot.S_hat.between(0.49, 0.51).all() and rot.status.str.contains("low_null_sd:S").all()
    assert (gau.S_hat > 0.99).all() and (gau.S_sd > 1e-3).all()
    # The reference applies explicit Haar rotations in 512-d and sees the same.
    ref = run(world, Z[:2], y[:2], ch[:2], [0, 1, 2], s_null="rotation", backend="sklearn", n_init=3)
    for c in ch[:2]:
        s = ref[ref.channel == c].S
        np.testing.assert_allclose(s, s.iloc[0], atol=1e-5)


def test_shuffle_d_null_is_degenerate_at_prompt_level(world, mixed):
    Z, y, ch = mixed
    res = run(world, Z, y, ch, [0, 1, 2, 3], d_null="shuffle", gap_level="prompt")
    d = res.pivot(index="channel", columns="draw", values="D")
    np.testing.assert_allclose(d.values, d[[0]].values.repeat(4, 1), atol=1e-6)
    conc = run(world, Z, y, ch, [1, 2, 3], d_null="shuffle", gap_level="concept")
    assert conc.groupby("channel").D.std().min() > 1e-4  # templates mixed across concepts do change the gap


def test_identical_patches_score_zero_structure(world):
    """A channel whose patches are all the same crop: no structure, and rounding noise must not look like any."""
    v = world.concepts[0]
    Z = np.tile(v, (1, 50, 1)).astype(np.float32)
    res = run(world, Z, np.zeros((1, 50), int), np.arange(1), [0, 1, 2, 3], n_init=3)
    assert (res.S == 0).all() and (res.Q == 0).all() and res.k_hat.between(2, 5).all()
    assert res.iloc[0].cluster_concept_1[0] == "concept0"


def test_every_configurable_null_and_backend_has_an_implementation():
    """The config's options and the dispatch tables name the same choices (no option without code, or back)."""
    from typing import get_args

    from polypsi.stats import batched, nulls, reference, score

    d_nulls = set(get_args(NullConfig.model_fields["d_null"].annotation))
    assert set(nulls.D_NULL_DRAWS) == d_nulls
    assert set(batched.D_NULLS) == d_nulls
    assert set(reference.D_NULLS) == d_nulls
    assert set(score.BACKENDS) == set(get_args(StatsConfig.model_fields["backend"].annotation))


def test_chunks_fit_the_device():
    """The CPU keeps chunks under its allocator's mmap limit; a GPU takes chunks as large as its memory budget
    allows (a chunk's fixed cost is its kernel launches), fewer units the larger K, and an explicit size wins."""
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert chunk_size(cpu, 50) == 256 and chunk_size(cpu, 200) == CHUNK_GRAM_ENTRIES // 200**2 < 256
    assert chunk_size(cpu, 50, 8) == 8 and chunk_size(cpu, 200, 4096) == chunk_size(cpu, 200)
    sizes = [chunk_size(gpu, K) for K in (10, 50, 200, 1000)]
    assert sizes == sorted(sizes, reverse=True) and sizes[1] > 3000 and sizes[-1] >= 1
    for K, units in zip((10, 50, 200), sizes):
        assert units * (80 * K**2 + (64 << 10)) <= DEVICE_CHUNK_BYTES < (units + 1) * (80 * K**2 + (64 << 10))
    assert chunk_size(gpu, 50, 100) == 100
