"""Resuming a killed run with the same command: Snakemake's locks that a killed run left behind.

Snakemake locks a working folder while it runs (`.snakemake/locks/`) and removes the locks when
it ends; a run killed with SIGKILL (or by a crash of the machine) cannot, and the next run stops
with a LockException until `snakemake --unlock`. The workflow calls `clear_stale_locks` when it
is planned, in the main Snakemake process only: locks are removed when no process of their
owner is alive. The owner is the main process that wrote `owner-<host>-<pid>.json` beside the
locks (`record_owner`, from the workflow's onstart handler); a lock without that record (a run
killed before its jobs started) is stale when no Snakemake process runs in the folder on this
machine. Locks held on another machine of a shared filesystem are never removed here.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

LOCKS = Path(".snakemake") / "locks"


def _create_time(pid: int) -> float | None:
    import psutil  # lazy: ships with Snakemake; only needed when locks are found

    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else p.create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def record_owner(workdir: str | Path = ".") -> Path | None:
    """Note this process as the owner of the folder's locks (call once the locks are taken)."""
    locks = Path(workdir) / LOCKS
    if not any(locks.glob("*.lock")):
        return None  # --nolock: nothing to own
    pid = os.getpid()
    path = locks / f"owner-{socket.gethostname()}-{pid}.json"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": pid, "started": _create_time(pid)}))
    return path


def _snakemake_processes(workdir: Path) -> list[int]:
    """Other live processes of Snakemake (or of its jobs' scripts) running in `workdir` on this machine."""
    import psutil  # lazy: as above

    me = psutil.Process()
    skip = {me.pid, *(p.pid for p in me.parents())}  # a shell or make that started this run
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        info = p.info
        if info["pid"] in skip or not info["cwd"] or not info["cmdline"]:
            continue
        if any("snakemake" in part for part in info["cmdline"]) and Path(info["cwd"]) == workdir:
            found.append(info["pid"])
    return found


def stale_locks(workdir: str | Path = ".") -> tuple[bool, str]:
    """(whether the folder's locks can be removed, why not / whose they were)."""
    workdir = Path(workdir).resolve()
    locks = workdir / LOCKS
    if not any(locks.glob("*.lock")):
        return False, "no locks"
    host = socket.gethostname()
    owners = []
    for f in locks.glob("owner-*.json"):
        try:
            owners.append(json.loads(f.read_text()))
        except (OSError, ValueError):
            continue
    elsewhere = [o for o in owners if o.get("host") != host]
    if elsewhere:
        o = elsewhere[0]
        return False, f"locked by a run on {o.get('host')} (pid {o.get('pid')})"
    for o in owners:
        started = _create_time(int(o["pid"]))
        if started is not None and (o.get("started") is None or abs(started - o["started"]) < 1.0):
            return False, f"locked by a live run (pid {o['pid']})"
    live = _snakemake_processes(workdir)
    if live:
        return False, f"Snakemake process(es) {live} run in this folder"
    return True, f"left by a killed run (pid {', '.join(str(o['pid']) for o in owners) or 'unknown'})"


def clear_stale_locks(workdir: str | Path = ".") -> str | None:
    """Remove the folder's Snakemake locks if their owner is dead; returns what was done, or None."""
    stale, why = stale_locks(workdir)
    if not stale:
        return None
    locks = Path(workdir) / LOCKS
    for f in list(locks.iterdir()):
        if f.name.endswith(".lock") or (f.name.startswith("owner-") and f.suffix == ".json"):
            f.unlink(missing_ok=True)
    return f"removed the Snakemake locks of {Path(workdir).resolve()}, {why}"
