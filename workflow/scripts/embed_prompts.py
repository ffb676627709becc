from polypsi.io import read_table
from polypsi.prompts import embed_prompts
from polypsi.runtime import resolve_device, run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(lambda: embed_prompts(cfg, cfg.embedder, read_table(smk.input.dataset), smk.output[0],
                                resolve_device(cfg.device), log), log)
