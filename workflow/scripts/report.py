from polypsi.report.build import run_report
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(lambda: run_report(cfg, list(params["layers"]), dict(smk.input.items()), dict(smk.output.items()), log), log)
