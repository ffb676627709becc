"""Stale Snakemake locks of a killed run are removed when the workflow is planned; live ones never."""

import json
import os
import socket
import subprocess
import sys

import psutil

from polypsi.resume import LOCKS, clear_stale_locks, record_owner, stale_locks


def _locked(work, owner=None):
    locks = work / LOCKS
    locks.mkdir(parents=True)
    (locks / "0.input.lock").write_text("results/x\n")
    (locks / "0.output.lock").write_text("results/y\n")
    if owner is not None:
        (locks / f"owner-{owner['host']}-{owner['pid']}.json").write_text(json.dumps(owner))
    return locks


def _dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_nothing_to_do_without_locks(tmp_path):
    assert stale_locks(tmp_path) == (False, "no locks") and clear_stale_locks(tmp_path) is None
    assert record_owner(tmp_path) is None  # --nolock: nothing recorded


def test_locks_of_a_dead_owner_are_removed(tmp_path):
    locks = _locked(tmp_path, {"host": socket.gethostname(), "pid": _dead_pid(), "started": 1.0})
    note = clear_stale_locks(tmp_path)
    assert note and "killed run" in note and not list(locks.iterdir())


def test_live_or_remote_owners_keep_their_locks(tmp_path):
    me = psutil.Process()
    _locked(tmp_path, {"host": socket.gethostname(), "pid": me.pid, "started": me.create_time()})
    assert stale_locks(tmp_path) == (False, f"locked by a live run (pid {me.pid})")
    other = tmp_path / "other"
    _locked(other, {"host": "elsewhere.example", "pid": _dead_pid(), "started": 1.0})
    assert clear_stale_locks(other) is None and "on elsewhere.example" in stale_locks(other)[1]


def test_record_owner_names_this_process(tmp_path):
    _locked(tmp_path)
    path = record_owner(tmp_path)
    rec = json.loads(path.read_text())
    assert rec["pid"] == os.getpid() and rec["host"] == socket.gethostname()
    assert stale_locks(tmp_path)[0] is False  # this process is alive


def test_without_an_owner_a_snakemake_process_in_the_folder_keeps_the_locks(tmp_path):
    locks = _locked(tmp_path)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "snakemake"], cwd=tmp_path)
    try:
        for _ in range(50):  # until its command line is readable
            if psutil.Process(p.pid).cmdline()[-1:] == ["snakemake"]:
                break
        stale, why = stale_locks(tmp_path)
        assert not stale and str(p.pid) in why
    finally:
        p.kill()
        p.wait()
    assert clear_stale_locks(tmp_path) and not any(locks.glob("*.lock"))
