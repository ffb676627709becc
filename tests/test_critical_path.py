"""benchmarks/critical_path.py: schedules by hand-checked examples, and the one-GPU estimates cover the plan."""

import sys

import pytest
import yaml
from workflow_runs import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import critical_path as cp  # noqa: E402


def job(rule, inputs=(), outputs=(), gpu=False, threads=1, priority=0, **wildcards):
    return {"rule": rule, "input": list(inputs), "output": list(outputs), "gpu": gpu, "threads": threads,
            "priority": priority, "wildcards": wildcards}


# mine -> embed (GPU) -> score (GPU) -> report; mine -> sprites (CPU, 4 threads); k_scores (GPU) after embed
JOBS = [
    job("mine", outputs=["topk"], gpu=True),
    job("embed", ["topk"], ["emb"], gpu=True),
    job("sprites", ["topk"], ["spr"], threads=4),
    job("k_scores", ["emb"], ["ks"], gpu=True),
    job("score", ["emb"], ["sc"], gpu=True, priority=1),
    job("report", ["sc", "ks", "spr"], ["rep"]),
]
EST = {"mine": [10, 20], "embed": [20, 40], "sprites": [5, 100], "k_scores": [30, 30], "score": [15, 15],
       "report": [5, 5]}


def test_unlimited_schedule_follows_the_longest_chain():
    start, finish, after = cp.schedule(JOBS, EST, 0)
    assert max(finish.values()) == 10 + 20 + 30 + 5  # mine, embed, k_scores, report
    assert [j["rule"] for j, *_ in cp.chain(JOBS, start, finish, after)] == ["mine", "embed", "k_scores", "report"]
    start, finish, after = cp.schedule(JOBS, EST, 1)  # the high values: the sprites set the end
    assert max(finish.values()) == 20 + 100 + 5
    assert [j["rule"] for j, *_ in cp.chain(JOBS, start, finish, after)] == ["mine", "sprites", "report"]


def test_slots_and_priorities():
    # one GPU slot: score (priority 1) goes before k_scores, which waits for it
    start, finish, after = cp.schedule(JOBS, EST, 0, cores=8, gpus=1)
    assert start[4] == 30 and start[3] == 45 and max(finish.values()) == 80
    steps = cp.chain(JOBS, start, finish, after)
    assert [(j["rule"], waited) for j, _, _, waited in steps] == [("mine", 0), ("embed", 0), ("k_scores", 15),
                                                                  ("report", 0)]
    # two cores: the sprites' four threads take both (capped at the cores), once no other job holds one
    start, finish, after = cp.schedule(JOBS, EST, 0, cores=2, gpus=2)
    assert (start[2], finish[2]) == (60, 65) and max(finish.values()) == 70
    with pytest.raises(SystemExit, match="no estimate for rule 'sprites'"):
        cp.schedule(JOBS, {k: v for k, v in EST.items() if k != "sprites"}, 0)
    with pytest.raises(SystemExit, match="per layer but has none for 'layer4'"):
        cp.schedule([job("score", layer="layer4")], {"score": {"layer3": [1, 2]}}, 0)


def test_one_gpu_estimates_cover_the_plan():
    """Every rule of the one-GPU plan has an estimate (a new rule must get one), and the plan reads as expected."""
    jobs = cp.plan([str(ROOT / "config" / "one_gpu.yaml")], 16)
    estimates = yaml.safe_load((ROOT / "benchmarks" / "one_gpu_estimates.yaml").read_text())
    assert {j["rule"] for j in jobs} <= set(estimates)
    by_rule = {}
    for j in jobs:
        by_rule.setdefault(j["rule"], []).append(j)
    assert len(by_rule["score"]) == 2 and all(j["gpu"] and j["priority"] == 1 for j in by_rule["score"])
    assert not any(j["gpu"] for j in by_rule["sprites"]) and {j["threads"] for j in by_rule["sprites"]} == {4}
    for end in (0, 1):
        start, finish, after = cp.schedule(jobs, estimates, end, cores=16, gpus=3)
        assert len(finish) == len(jobs)
        first, last = cp.chain(jobs, start, finish, after)[0], cp.chain(jobs, start, finish, after)[-1]
        assert first[1] == 0 and last[2] == max(finish.values())
