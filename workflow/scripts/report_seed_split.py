from polypsi.report.build import run_seed_split
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(lambda: run_seed_split(cfg, list(smk.input.scores), smk.output[0], log), log)
