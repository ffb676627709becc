from polypsi.report.build import run_text_head
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(lambda: run_text_head(cfg, smk.input.patches, smk.input.prompts, list(smk.input.secondary),
                                smk.input.secondary_prompts, smk.output[0], log), log)
