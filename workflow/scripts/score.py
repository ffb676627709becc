from polypsi.runtime import resolve_device, run_stage, stage
from polypsi.scoring import score_shard

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(lambda: score_shard(cfg, smk.wildcards.layer, int(smk.wildcards.cshard), int(smk.wildcards.dshard),
                              params["n_draw_shards"],
                              smk.input.topk, smk.input.embeddings, smk.input.dataset, smk.input.prompts,
                              smk.output[0], resolve_device(cfg.device), log), log)
