"""profiles/slurm on a real single-node SLURM cluster (`make test-slurm`), and the profile's GPU requests.

The profile checks at the top run in every `make test`. The cluster tests are marked `slurm` and skipped unless
POLYPSI_TEST_SLURM=1 (`make test-slurm` sets it): as root they start a cluster with scripts/slurm_cluster.sh
(slurm-wlm and munge, installed if missing), run config/smoke.yaml with `snakemake --profile profiles/slurm`
through snakemake-executor-plugin-slurm, and beside it the same config locally (--cores 2), then compare.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROFILE = yaml.safe_load((ROOT / "profiles" / "slurm" / "config.yaml").read_text())
CLUSTER = ROOT / "scripts" / "slurm_cluster.sh"
SMOKE = ROOT / "config" / "smoke.yaml"
# A GPU request in an sbatch line: the plugin turns `resources: gpu=N` into --gpus=N (and `gres` into --gres).
GPU_FLAG = re.compile(r"""(?:^|[\s'"])(?:--gpus[=\s]|--gres[=\s]|-G\s?\d|--gpus-per-\w+[=\s])""")


def gpu_rules():
    """The workflow's rules that declare a `gpu` resource, read from workflow/rules/*.smk."""
    rules = set()
    for smk in (ROOT / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"^\s*rule ", smk.read_text(), flags=re.M)[1:]:
            name = block.split(":", 1)[0].strip()
            if re.search(r"^\s+gpu=", block.split("\n\n\n", 1)[0], flags=re.M):
                rules.add(name)
    return rules


def test_every_gpu_rule_goes_to_the_gpu_partition():
    rules = gpu_rules()
    assert {"mine_topk", "embed_patches", "embed_prompts", "interventions", "neuron_embeddings"} <= rules
    per_rule = PROFILE["set-resources"]
    missing = sorted(r for r in rules if per_rule.get(r, {}).get("slurm_partition") != "gpu")
    assert not missing, f"profiles/slurm/config.yaml: GPU rules without slurm_partition: gpu: {missing}"


def test_the_profile_requests_no_gpu_beside_the_rules_resource():
    """The rules' `gpu=1` is the one GPU request (the plugin's --gpus=1); slurm_extra must not add --gres or
    --gpus (the plugin refuses both there), nor may the profile set `gres`/`gpu` per rule."""
    for rule, res in {"default-resources": PROFILE["default-resources"], **PROFILE["set-resources"]}.items():
        assert not GPU_FLAG.search(" " + str(res.get("slurm_extra", ""))), rule
        assert not {"gres", "gpu", "gpus"} & set(res), rule


# ---------------------------------------------------------------------------------------------------------------
# On a cluster

needs_cluster = pytest.mark.skipif(os.environ.get("POLYPSI_TEST_SLURM") != "1",
                                   reason="needs a SLURM cluster: `make test-slurm` (as root) starts one")


def _env():
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src")] + ([path] if path else []))}


def _snakemake(work, *args, log):
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory", str(work),
           "--configfile", str(SMOKE), *args]
    with open(log, "w") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=_env())


def _wait(proc, log):
    if proc.wait() != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}), {log}:\n{Path(log).read_text()[-6000:]}")
    return Path(log).read_text()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The smoke config on the cluster (profiles/slurm) and locally, at the same time; their folders and logs."""
    if os.geteuid() != 0:
        pytest.fail("make test-slurm runs as root: scripts/slurm_cluster.sh installs, configures and starts SLURM")
    subprocess.run([str(CLUSTER), "start"], check=True)
    procs = []
    try:
        base = tmp_path_factory.mktemp("slurm")
        local, cluster = base / "local", base / "cluster"
        local.mkdir()
        cluster.mkdir()
        procs.append(lp := _snakemake(local, "--cores", "2", log=base / "local.log"))
        # squeue: this cluster has no slurmdbd, so sacct has no records (MinJobAge keeps finished jobs in squeue);
        # the first status check after 5 s rather than 40 (the node is this machine).
        cp = _snakemake(cluster, "--profile", str(ROOT / "profiles" / "slurm"), "--slurm-status-command", "squeue",
                        "--slurm-init-seconds-before-status-checks", "5", "--verbose", log=base / "cluster.log")
        procs.append(cp)
        cluster_log = _wait(cp, base / "cluster.log")
        local_log = _wait(lp, base / "local.log")
        jobs = _slurm_jobs(cluster_log)
        records = {j: _scontrol(j) for j in jobs}  # before stop: finished jobs stay in slurmctld for MinJobAge
        jobcomp = Path(os.environ.get("POLYPSI_SLURM_STATE", "/tmp/polypsi-slurm")) / "jobcomp.log"
        completions = _jobcomp(jobcomp.read_text())
        yield {"local": local / "results" / "smoke", "cluster": cluster / "results" / "smoke",
               "local_log": local_log, "cluster_log": cluster_log, "jobs": jobs, "records": records,
               "completions": completions}
    finally:
        for p in procs:  # a failed run leaves the other one running: stop it (SIGINT: Snakemake cancels its jobs)
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                p.wait(timeout=120)
        if os.environ.get("POLYPSI_SLURM_KEEP") != "1":
            subprocess.run([str(CLUSTER), "stop"], check=False)


def _slurm_jobs(log):
    """{SLURM job id: the sbatch line that submitted it}, from the plugin's verbose log."""
    calls = re.findall(r"^sbatch call: (sbatch .*)$", log, flags=re.M)
    # each job's SLURM log folder names its rule and wildcards: .snakemake/slurm_logs/rule_<name>/<wildcards>/
    by_folder = {Path(re.search(r"--output (\S+)", c).group(1)).parent: c for c in calls}
    assert len(by_folder) == len(calls), "two sbatch calls for one job"
    ids = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", log)
    return {job_id: by_folder[Path(slurm_log).parent] for job_id, slurm_log in ids}


def _scontrol(job_id):
    out = subprocess.run(["scontrol", "-d", "-o", "show", "job", job_id], capture_output=True, text=True,
                         check=True).stdout
    return dict(kv.split("=", 1) for kv in shlex.split(out) if "=" in kv)


def _jobcomp(text):
    return {m.group(1): dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            for line in text.splitlines() if (m := re.match(r"JobId=(\d+) ", line))}


def _rule(call):
    return re.search(r"--comment rule_([a-z_0-9]+?)(?:_wildcards_\S+)?(?:\s|$)", call).group(1)


def _job_stats(log):
    """{rule: jobs} from Snakemake's first "Job stats" table."""
    table = log.split("Job stats:", 1)[1].split("\n\n", 1)[0]
    rows = [line.split() for line in table.strip().splitlines()[2:]]
    return {r[0]: int(r[1]) for r in rows if len(r) == 2 and r[0] != "total"}


@pytest.mark.slurm
@needs_cluster
def test_every_job_went_through_sbatch(runs):
    """Every job of the run (but the local target rule `all`) was submitted with sbatch, ran and completed, as
    Slurm's own records say: slurmctld (scontrol show job) and the job completion log (jobcomp/filetxt)."""
    planned = _job_stats(runs["local_log"])
    planned.pop("all")
    submitted = Counter(_rule(call) for call in runs["jobs"].values())
    assert submitted == Counter(planned)
    for job_id, call in runs["jobs"].items():
        record = runs["records"][job_id]
        assert record["JobState"] == "COMPLETED", (job_id, record["JobState"])
        assert record["Comment"] == re.search(r"--comment (\S+)", call).group(1)
        assert runs["completions"][job_id]["JobState"] == "COMPLETED"
        assert runs["completions"][job_id]["Partition"] == record["Partition"]


@pytest.mark.slurm
@needs_cluster
def test_gpu_rules_request_one_gpu_once(runs):
    """GPU rules: one GPU request in the sbatch line (--gpus=1, from `resources: gpu=1`), the gpu partition,
    and Slurm allocated them one GPU; other rules request none."""
    gpu = gpu_rules()
    seen = set()
    for job_id, call in runs["jobs"].items():
        rule, submit = _rule(call), call.split(" --wrap=", 1)[0]
        flags = GPU_FLAG.findall(" " + submit)
        record = runs["records"][job_id]
        if rule in gpu:
            seen.add(rule)
            assert len(flags) == 1 and " --gpus=1" in submit, (rule, flags, submit)
            assert " -p gpu " in submit and record["Partition"] == "gpu", rule
            assert record.get("TresPerJob") == "gres:gpu:1" and record.get("JOB_GRES") == "gpu:1", record
        else:
            assert not flags, (rule, submit)
            assert " -p cpu " in submit and record["Partition"] == "cpu", rule
            assert record.get("TresPerJob") in (None, "(null)") and record.get("JOB_GRES") in (None, "(null)")
    assert {"mine_topk", "embed_patches", "embed_prompts", "interventions"} <= seen


# Files that legitimately differ between two runs: logs/ (timestamps, hosts, job ids) and benchmarks/*.tsv (timings).
DIFFERENT = ("logs", "benchmarks")


@pytest.mark.slurm
@needs_cluster
def test_every_table_is_identical_to_a_local_run(runs):
    """Every table (parquet, csv) equal to the local run's, values exact; every other file (figures, browser,
    json) identical byte for byte; only logs and timings differ."""
    local, cluster = runs["local"], runs["cluster"]

    def files(root):
        rels = (p.relative_to(root) for p in root.rglob("*") if p.is_file())
        return sorted(r for r in rels if r.parts[0] not in DIFFERENT)

    names = files(local)
    assert names == files(cluster)
    tables = [f for f in names if f.suffix in (".parquet", ".csv")]
    assert len(tables) > 30
    different = []
    for rel in tables:
        read = pd.read_parquet if rel.suffix == ".parquet" else pd.read_csv
        try:
            pd.testing.assert_frame_equal(read(cluster / rel), read(local / rel), check_exact=True)
        except AssertionError as e:
            different.append(f"{rel}: {' '.join(str(e).split())[:300]}")
    different += [str(rel) for rel in names if rel.suffix not in (".parquet", ".csv")
                  and (cluster / rel).read_bytes() != (local / rel).read_bytes()]
    assert not different, "\n".join(different)
