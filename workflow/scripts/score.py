from polypsi.job import run
from polypsi.scoring import score_stage

run(snakemake, score_stage)  # noqa: F821
