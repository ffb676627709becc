from polypsi.job import run
from polypsi.world.report import ground_truth_stage

run(snakemake, ground_truth_stage)  # noqa: F821
