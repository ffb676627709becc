from polypsi.job import run
from polypsi.mining import merge_topk_stage

run(snakemake, merge_topk_stage)  # noqa: F821
