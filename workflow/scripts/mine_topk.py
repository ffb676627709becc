from polypsi.io import read_table
from polypsi.mining import mine_shard
from polypsi.runtime import resolve_device, run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
outputs = dict(zip(params["layers"], map(str, smk.output)))
run_stage(
    lambda: mine_shard(cfg, read_table(smk.input.dataset), int(smk.wildcards.shard), params["n_shards"], outputs,
                       resolve_device(cfg.device), workers=max(0, smk.threads - 1), log_file=log),
    log,
)
