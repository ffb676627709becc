"""The sharded K-sensitivity (rules score, k_scores, k_sensitivity) against the one-process analysis."""

import numpy as np
import pandas as pd
import pytest

from polypsi.config import Config
from polypsi.io import read_table, write_table
from polypsi.job import Files, Job
from polypsi.report import robustness
from polypsi.report.build import k_sensitivity_stage
from polypsi.report.k_scores import k_scores_stage
from polypsi.scoring import score_stage
from polypsi.shards import channel_shard
from polypsi.stats import TextBank
from polypsi.stats.synthetic import make_world, noise_channels, planted_channels

D_DIM, K, LAYER = 32, 16, "layer4"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder up to the embeddings: planted channels 0..5, structure-free ones 6..11 (ids shuffled)."""
    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(1)
    world = make_world(rng, d=D_DIM, n_concepts=12, n_null_concepts=20)
    Zp, lp, _ = planted_channels(rng, world, n=6, k=2, K=K, separation=2.0)
    Zn, ln = noise_channels(rng, 6, K=K, d=D_DIM)
    Z, labels = np.concatenate([Zp, Zn]), np.concatenate([lp, ln])
    perm = np.argsort(rng.random(labels.shape), axis=1)  # the planted clusters interleaved along the ranks
    Z, labels = np.take_along_axis(Z, perm[..., None], 1), np.take_along_axis(labels, perm, 1)
    channels = rng.permutation(12)
    n = len(channels)
    image_id = np.arange(n * K)  # one image per patch: its label is the patch's
    write_table(pd.DataFrame({"image_id": image_id, "label": labels.reshape(-1)}), root / "dataset.parquet")
    topk = pd.DataFrame({"channel": np.repeat(channels, K), "rank": np.tile(np.arange(K), n), "image_id": image_id,
                         "activation": np.tile(np.linspace(2.0, 1.0, K), n)})
    write_table(topk, root / "topk.parquet")
    t = world.text
    rows = [("main", t.concepts[c], c, "{}", t.concepts[c]) for c in t.concept_id] + \
           [("null", t.null_concepts[c], c, "{}", t.null_concepts[c]) for c in t.null_concept_id]
    prompts = pd.DataFrame(rows, columns=["set", "concept", "concept_id", "template", "prompt"])
    write_table(prompts, root / "prompts.parquet", embeddings={"embedding": np.concatenate([t.emb, t.null_emb])})
    z = Z.reshape(n * K, -1)
    for shards in (1, 2, 3):  # 1: the one-process analysis reads the layer's embeddings in one table
        for s in range(shards):
            keep = np.isin(topk.channel, channel_shard(channels, s, shards))
            write_table(topk.loc[keep, ["channel", "rank"]], root / f"embeddings_{shards}" / f"shard{s}.parquet",
                        embeddings={"embedding": z[keep]})
    return root


def _config(channels, draws, m, k_values):
    return Config.model_validate({"device": "cpu", "mining": {"topk": K}, "nulls": {"m": 6},
                                  "shards": {"channels": channels, "draws": draws},
                                  "report": {"k_values": k_values, "k_sensitivity_draws": m}})


def _sharded(root, out, cfg):
    """The workflow's jobs on the run: score and k_scores per (channel shard, draw shard), then k_sensitivity."""
    common = dict(topk=str(root / "topk.parquet"), dataset=str(root / "dataset.parquet"),
                  prompts=str(root / "prompts.parquet"))
    scores, k_scores = [], []
    for c in range(cfg.shards.channels):
        for d in range(cfg.shards.draws):
            inp = Files(**common, embeddings=str(root / f"embeddings_{cfg.shards.channels}" / f"shard{c}.parquet"))
            wild = {"layer": LAYER, "cshard": str(c), "dshard": str(d)}
            scores.append(str(out / f"scores_{c}_{d}.parquet"))
            k_scores.append(str(out / f"k_scores_{c}_{d}.parquet"))
            score_stage(Job(cfg=cfg, input=inp, output=Files(scores=scores[-1]), wildcards=wild))
            k_scores_stage(Job(cfg=cfg, input=inp, output=Files(scores=k_scores[-1]), wildcards=wild))
    table = out / "k_sensitivity.parquet"
    k_sensitivity_stage(Job(cfg=cfg, input=Files(k_scores=k_scores, scores=scores, topk=common["topk"]),
                            output=Files(table=str(table)), wildcards={"layer": LAYER}))
    return read_table(table), scores, k_scores


def _one_process(root, cfg):
    """robustness.k_sensitivity on the patches table (the calibrate stage's layout) of the same embeddings."""
    parts = [read_table(p, embedding="embedding") for p in sorted((root / "embeddings_1").glob("shard*.parquet"))]
    df = pd.concat([t for t, _ in parts], ignore_index=True)
    emb = np.concatenate([e for _, e in parts])
    topk, ds = read_table(root / "topk.parquet"), read_table(root / "dataset.parquet")
    df = df.merge(topk, on=["channel", "rank"], how="left").merge(ds, on="image_id", how="left")
    df["cluster"] = 0
    text = TextBank.from_table(*read_table(root / "prompts.parquet", embedding="embedding"))
    return robustness.k_sensitivity(df, emb, text, cfg.report.k_values, cfg.stats, cfg.nulls, cfg.calibration,
                                    cfg.report.k_sensitivity_draws, LAYER)


@pytest.mark.parametrize("channels, draws, m, k_values", [
    (3, 3, 4, [4, 8, 12]),  # m < nulls.m: the control at the mined K from the run's scores; k=4 <= k_max skipped
    (2, 7, 4, [8, 12]),  # draw shards 5 and 6 hold only draws above m: empty k_scores tables
    (2, 3, None, [8, 16]),  # all draws; k = K asked for, from the run's scores
])
def test_sharded_table_equals_the_one_process_analysis(run, tmp_path, channels, draws, m, k_values):
    cfg = _config(channels, draws, m, k_values)
    got, scores, k_scores = _sharded(run, tmp_path, cfg)
    want = _one_process(run, cfg)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    m = m or cfg.nulls.m
    assert sorted(got.k.unique()) == sorted({k for k in k_values if k > cfg.stats.k_max} | ({K} if m < 6 else set()))
    assert (got.m == m).all() and len(got) == 12 * got.k.nunique()
    # Each k_scores shard: its score shard's columns plus k, its draws up to m, every k below K.
    rows = [read_table(p) for p in k_scores]
    for t, s in zip(rows, scores):
        s = read_table(s)
        assert list(t.columns) == list(s.columns) + ["k"]
        assert set(t.draw) == {d for d in s.draw if d <= m}
    both = pd.concat([t for t in rows if len(t)], ignore_index=True)
    assert sorted(both.k.unique()) == [k for k in sorted(k_values) if cfg.stats.k_max < k < K]
    assert len(both) == 12 * (m + 1) * both.k.nunique() and not both.duplicated(["k", "channel", "draw"]).any()
    if draws == 7:
        assert [len(t) == 0 for t in rows[:7]] == [False] * 5 + [True] * 2

