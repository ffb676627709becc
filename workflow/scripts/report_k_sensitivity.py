from polypsi.report.build import run_k_sensitivity
from polypsi.runtime import resolve_device, run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(lambda: run_k_sensitivity(cfg, smk.wildcards.layer, smk.input.patches, smk.input.prompts, smk.output[0],
                                    params["k_values"], params["k_sensitivity_draws"], resolve_device(cfg.device), log),
          log)
