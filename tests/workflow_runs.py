"""What the workflow tests share: the repository root, the Snakemake command and the tables' leading columns."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
PSI_COLUMNS = ["channel", "S", "Q", "D", "S_mu", "S_sd", "Q_mu", "Q_sd", "D_mu", "D_sd",
               "S_hat", "Q_hat", "D_hat", "psi", "log_psi", "k_hat", "status"]
PATCH_COLUMNS = ["channel", "rank", "image_id", "u", "v", "activation", "cluster", "label", "embedding"]


def snakemake(workdir, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args],
                       capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p
