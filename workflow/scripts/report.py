import pandas as pd
from sklearn.metrics import roc_auc_score

from polypsi.io import read_table, write_csv
from polypsi.runtime import run_stage, stage

cfg, log, params = stage(snakemake)  # noqa: F821
smk = snakemake  # noqa: F821


def main():
    rows = []
    for layer, pr, pn in zip(params["layers"], smk.input.psi, smk.input.null_psi):
        real, null = read_table(pr), read_table(pn)
        real = real[real["status"] != "dead: top activation <= 0"]
        for metric in ["psi", "S_hat", "Q_hat", "D_hat"]:
            a, b = real[metric].dropna(), null[metric].dropna()
            y = [1] * len(a) + [0] * len(b)
            rows.append((layer, metric, roc_auc_score(y, pd.concat([a, b])) if len(a) and len(b) else float("nan")))
    write_csv(pd.DataFrame(rows, columns=["layer", "metric", "auroc"]), smk.output.auroc)


run_stage(main, log)
