from polypsi.job import run
from polypsi.report.build import k_sensitivity_stage

run(snakemake, k_sensitivity_stage)  # noqa: F821
