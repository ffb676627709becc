from polypsi.report.build import run_browser
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(lambda: run_browser(cfg, list(params["layers"]), smk.input.psi, smk.input.clusters, smk.input.patches,
                              smk.input.dataset, smk.input.geometry, smk.output[0], params["thumb_size"], log), log)
