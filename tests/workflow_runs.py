"""What the workflow tests share: the repository root, the Snakemake command and the tables' leading columns."""

import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
PSI_COLUMNS = ["channel", "S", "Q", "D", "S_mu", "S_sd", "Q_mu", "Q_sd", "D_mu", "D_sd",
               "S_hat", "Q_hat", "D_hat", "psi", "log_psi", "k_hat", "status"]
PATCH_COLUMNS = ["channel", "rank", "image_id", "u", "v", "activation", "cluster", "label", "embedding"]

# Dry runs are Snakemake's own command line in a process forked from one that has already imported
# Snakemake (about 1.8 s of a 3 s dry run; the suite makes about 50). Only third-party modules are
# preloaded: the workflow and polypsi are read afresh by every run, so edits between runs count.
# Like any fork-server child, each imports the caller's main module first (pytest's entry points guard
# theirs with `if __name__ == "__main__"`).
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["snakemake.cli", "pydantic"])


def _cli(argv, cwd, env, out, err):
    """In the forked child: `python -m snakemake *argv` in cwd with env, its output to the files out and err."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(f, fd)
        os.close(f)
    sys.argv = ["snakemake", *argv]
    from snakemake.cli import main

    main()  # exits; its code is the child's exit code


def _forked_run(cmd, env):
    """subprocess.run(cmd, capture_output=True, text=True, env=env) for `python -m snakemake`, as a forked child."""
    assert cmd[1:3] == ["-m", "snakemake"], cmd
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp, "out"), Path(tmp, "err")
        out.touch(), err.touch()  # a child that fails before running Snakemake leaves them empty
        child = _FORKS.Process(target=_cli, args=(cmd[3:], os.getcwd(), env, out, err))
        child.start()
        child.join()
        return subprocess.CompletedProcess(cmd, child.exitcode, out.read_text(), err.read_text())


def snakemake(workdir, *args, check=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [*SNAKEMAKE, "--directory", str(workdir), "--cores", "2", *args]
    if "-n" in args:
        p = _forked_run(cmd, env)
    else:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p
