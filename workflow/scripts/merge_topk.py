from polypsi.mining import merge_topk_files
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
run_stage(lambda: merge_topk_files(list(snakemake.input), params["topk"], snakemake.output[0]), log)  # noqa: F821
