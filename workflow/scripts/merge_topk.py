from polypsi.job import run
from polypsi.topk import merge_topk_stage

run(snakemake, merge_topk_stage)  # noqa: F821
