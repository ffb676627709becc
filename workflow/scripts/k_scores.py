from polypsi.job import run
from polypsi.report.k_scores import k_scores_stage

run(snakemake, k_scores_stage)  # noqa: F821
