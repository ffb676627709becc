from polypsi.io import read_json
from polypsi.runtime import run_stage, stage
from polypsi.scoring import calibrate_layer

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821
run_stage(lambda: calibrate_layer(cfg, smk.wildcards.layer, list(smk.input.scores), smk.input.topk,
                                  list(smk.input.embeddings), smk.input.dataset, read_json(smk.input.geometry),
                                  dict(smk.output.items()), log), log)
