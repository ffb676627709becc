"""Rule k_scores: the raw scores of the K-sensitivity analysis, sharded like the scoring.

A module of its own (not report.build): this GPU job's code version then leaves out the report's
figures and browser, so editing them does not redo the costly re-scoring.
"""

from __future__ import annotations

from ..io import read_table, write_table
from ..scoring import load_patch_arrays, top_activations
from ..shards import draws_of
from ..stats import TextBank
from . import robustness


def k_scores_stage(job) -> None:
    """Rule k_scores: raw S, Q, D of one channel shard's first k patches, for every k of report.k_values
    between stats.k_max and the mined K, and the draws of one draw shard up to report.k_sensitivity_draws."""
    cfg, log = job.cfg, job.logger("polypsi.report")
    layer, cshard, dshard = job.wildcard("layer"), job.wildcard("cshard"), int(job.wildcard("dshard"))
    m = robustness.k_draws(cfg.report.k_sensitivity_draws, cfg.nulls)
    topk, dataset = read_table(job.input.topk), read_table(job.input.dataset)
    K = robustness.mined_k(topk)
    # k = K is not re-scored: rule k_sensitivity takes those rows from the run's own scores.
    ks = [k for k in robustness.k_table_ks(cfg.report.k_values, K, cfg.stats, cfg.nulls, m, layer, log) if k < K]
    draws = [d for d in draws_of(dshard, cfg.shards.draws, cfg.nulls.m) if d <= m]
    channels, z, labels = load_patch_arrays(topk, [read_table(job.input.embeddings, embedding="embedding")], dataset)
    log.info("layer %s, channel shard %s: %d channels x %d patches; k %s; draws %s", layer, cshard, len(channels),
             K, ks, draws)
    text = TextBank.from_table(*read_table(job.input.prompts, embedding="embedding"))
    scores = robustness.k_subset_scores(z, labels, channels, text, ks, draws, cfg.stats, cfg.nulls, layer, job.device,
                                        activations=top_activations(topk, channels, z.shape[1]), log=log,
                                        progress=True)
    write_table(scores, job.output.scores)
    log.info("done")
