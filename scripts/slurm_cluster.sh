#!/usr/bin/env bash
# A single-node SLURM cluster on this machine, to test profiles/slurm (`make test-slurm`).
#
#   sudo scripts/slurm_cluster.sh start    # install slurm-wlm + munge if missing, configure, start, wait for idle
#   sudo scripts/slurm_cluster.sh status   # daemons, sinfo
#   sudo scripts/slurm_cluster.sh stop     # stop the daemons, remove the configuration and all state
#
# Run as root on a Debian (or Ubuntu) machine with no SLURM of its own: it writes /etc/slurm/slurm.conf and
# gres.conf (and refuses to overwrite ones it did not write), keeps every other file in $POLYPSI_SLURM_STATE
# (default /tmp/polypsi-slurm: state, spool, logs, pid files, the job completion log) and starts the daemons
# directly (no systemd). Both commands are idempotent.
#
# The node is a test stand-in, not a description of the machine:
# - GPUs: `Gres=gpu:4`, four gres/gpu whose "devices" are empty files ($POLYPSI_SLURM_STATE/dev/gpu0..3 in
#   gres.conf). Slurm 22.05 drops a GPU without File= ("Removing file-less GPU"), so `Name=gpu Count=4` alone
#   gives a node with no GPU. With the files, `sbatch --gpus=1` is accepted, scheduled against the four and
#   recorded (scontrol show job: TresPerJob=gres:gpu:1, JOB_GRES=gpu:1); the jobs see no device and use the CPU.
#   Four rather than one so that the GPU jobs of a stage (2 mine_topk, 4 embed_patches) run side by side.
# - CPUs and memory: the node advertises $POLYPSI_SLURM_CPUS CPUs (default 16) and $POLYPSI_SLURM_MEM_MB MB
#   (default 64000) whatever the machine has (SlurmdParameters=config_overrides), so profiles/slurm's requests
#   (8 threads and 32 GB for mine_topk, 16 GB for embed_patches) fit unchanged. Nothing enforces them (no
#   cgroups): the jobs share the real cores and use far less memory. Memory is consumable, so at most 8 jobs of
#   8 GB (or 2 mine_topk) run at once.
# - Partitions `cpu` (default) and `gpu`, both on the one node, as named in profiles/slurm/config.yaml.
# - No slurmdbd: AccountingStorageType=accounting_storage/none, so `sacct` has no records; snakemake needs
#   `--slurm-status-command squeue`, and MinJobAge=3600 keeps finished jobs in slurmctld (squeue, scontrol show
#   job) for an hour. Every finished job is also written to $POLYPSI_SLURM_STATE/jobcomp.log (jobcomp/filetxt:
#   id, name, state, partition, node, times, exit code).
set -euo pipefail

STATE=${POLYPSI_SLURM_STATE:-/tmp/polypsi-slurm}
CPUS=${POLYPSI_SLURM_CPUS:-16}
MEM_MB=${POLYPSI_SLURM_MEM_MB:-64000}
CONF_DIR=/etc/slurm
MARK="# written by polypsi scripts/slurm_cluster.sh"
NODE=$(hostname -s)
TIMEOUT=${POLYPSI_SLURM_TIMEOUT:-60}

die() { echo "slurm_cluster: $*" >&2; exit 1; }
say() { echo "slurm_cluster: $*"; }

need_root() { [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages, writes $CONF_DIR and starts daemons)"; }

ours() {  # a configuration file that is absent or was written by this script
  [ ! -e "$1" ] || head -n 1 "$1" | grep -qF "$MARK"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sinfo >/dev/null &&
     command -v munged >/dev/null; then
    return
  fi
  say "installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
  ours "$CONF_DIR/slurm.conf" || die "$CONF_DIR/slurm.conf exists and was not written by this script; not touching it"
  ours "$CONF_DIR/gres.conf" || die "$CONF_DIR/gres.conf exists and was not written by this script; not touching it"
  mkdir -p "$CONF_DIR" "$STATE"/{ctld,spool,log,run,dev}
  : >"$STATE/dev/gpu0"; : >"$STATE/dev/gpu1"; : >"$STATE/dev/gpu2"; : >"$STATE/dev/gpu3"
  cat >"$CONF_DIR/slurm.conf" <<EOF
$MARK (start|stop|status); removed by its stop
ClusterName=polypsi
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SlurmdParameters=config_overrides
GresTypes=gpu
MinJobAge=3600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MpiDefault=none
MailProg=/bin/true
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:4 State=UNKNOWN
PartitionName=cpu Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$NODE MaxTime=INFINITE State=UP
EOF
  cat >"$CONF_DIR/gres.conf" <<EOF
$MARK (start|stop|status); removed by its stop
# GPU stand-ins: four gres/gpu whose "devices" are empty files (Slurm 22.05 drops a GPU without File=).
NodeName=$NODE Name=gpu File=$STATE/dev/gpu[0-3] Count=4
EOF
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    say "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then mungekey --create --force; else
      dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; fi
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
  fi
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  if id munge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
  else
    /usr/sbin/munged --force
  fi
  : >"$STATE/run/munged.ours"  # started here: stop stops it too
  for _ in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.5; done
  die "munged did not start (see /var/log/munge/munged.log)"
}

wait_idle() {
  local t=0 s
  while :; do
    s=$(sinfo -h -n "$NODE" -o %T 2>/dev/null | sort -u | tr '\n' ' ')
    case "$s" in idle*|mixed*|allocated*) say "node $NODE: $s(partitions cpu, gpu)"; return ;; esac
    case "$s" in *drain*|*down*|*invalid*|*fail*)
      scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;; esac
    t=$((t + 1))
    [ "$t" -le "$((TIMEOUT * 2))" ] || {
      tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
      die "node $NODE not idle after ${TIMEOUT}s (state: ${s:-none}); logs above"; }
    sleep 0.5
  done
}

start() {
  need_root
  install
  write_conf
  start_munge
  if ! pid_alive "$STATE/run/slurmctld.pid"; then
    /usr/sbin/slurmctld -c -f "$CONF_DIR/slurm.conf"   # -c: a clean start, no state of an earlier cluster
  fi
  for _ in $(seq 40); do scontrol ping >/dev/null 2>&1 && break; sleep 0.5; done
  scontrol ping >/dev/null 2>&1 || { tail -n 20 "$STATE/log/slurmctld.log" >&2 || true; die "slurmctld did not start"; }
  if ! pid_alive "$STATE/run/slurmd.pid"; then
    /usr/sbin/slurmd -f "$CONF_DIR/slurm.conf"
  fi
  wait_idle
}

stop_pid() {  # name, pid file
  local f=$2 p
  pid_alive "$f" || return 0
  p=$(cat "$f")
  kill "$p" 2>/dev/null || true
  for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.25; done
  kill -9 "$p" 2>/dev/null || true
  say "$1 (pid $p) did not stop on SIGTERM; killed"
}

stop() {
  need_root
  if ours "$CONF_DIR/slurm.conf" && [ -e "$CONF_DIR/slurm.conf" ]; then
    scancel --full --user root >/dev/null 2>&1 || true
  fi
  stop_pid slurmd "$STATE/run/slurmd.pid"
  stop_pid slurmctld "$STATE/run/slurmctld.pid"
  if [ -e "$STATE/run/munged.ours" ]; then stop_pid munged /run/munge/munged.pid; fi
  for f in slurm.conf gres.conf; do
    if [ -e "$CONF_DIR/$f" ] && ours "$CONF_DIR/$f"; then rm -f "$CONF_DIR/$f"; fi
  done
  rm -rf "$STATE"
  # munged is stopped only if start started it (a machine's own munged is left alone).
  say "stopped; removed $STATE and the configuration"
}

status() {
  local ok=0
  for d in slurmctld slurmd; do
    if pid_alive "$STATE/run/$d.pid"; then echo "$d: running (pid $(cat "$STATE/run/$d.pid"))"; else
      echo "$d: not running"; ok=1; fi
  done
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then echo "munged: running"; else
    echo "munged: not running"; ok=1; fi
  [ "$ok" -ne 0 ] || sinfo -N -o "%N %P %T %c %m %G"
  return "$ok"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
