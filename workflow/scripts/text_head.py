from polypsi.job import run
from polypsi.report.build import text_head_stage

run(snakemake, text_head_stage)  # noqa: F821
