from polypsi.job import run
from polypsi.mining import mine_topk_stage

run(snakemake, mine_topk_stage)  # noqa: F821
