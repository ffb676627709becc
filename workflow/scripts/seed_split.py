from polypsi.job import run
from polypsi.report.build import seed_split_stage

run(snakemake, seed_split_stage)  # noqa: F821
