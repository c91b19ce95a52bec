#!/usr/bin/env bash
# A real single-node SLURM on this machine for as long as one command runs:
#   bash scripts/slurm_local.sh [command ...]     (default: pytest tests/test_slurm.py)
# Installs slurm-wlm and munge with apt-get if they are missing, starts munged (unless one already
# answers), slurmctld and slurmd from a generated slurm.conf in a private dir (its own ports, so a
# system SLURM is left alone), runs the command with SLURM_CONF pointing there, then cancels the
# jobs left and stops the daemons it started, by PID, whatever happened. Needs root (the daemons
# run as root, as in /work/shared/notes/slurm-local.md). Where SLURM cannot be had, it says so in one
# line and exits 0, so CI on a machine without apt-get is not failed for it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
[ $# -gt 0 ] || set -- $PYTHON -m pytest tests/test_slurm.py -v  # $PYTHON may carry words (env ...)

skip() { echo "test-slurm skipped: $*"; exit 0; }

if ! command -v slurmctld >/dev/null || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || skip "slurm-wlm and munge are not installed, and installing them needs root"
    command -v apt-get >/dev/null || skip "slurm-wlm and munge are not installed and there is no apt-get"
    echo "installing slurm-wlm and munge with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } \
        || skip "apt-get could not install slurm-wlm and munge"
fi
[ "$(id -u)" = 0 ] || skip "the SLURM daemons here run as root; run as root (CI does)"

DIR=${SLURM_LOCAL_DIR:-/tmp/fednas-slurm}
NODE=$(hostname -s)
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
rm -rf "$DIR"/{state,spool,log} && mkdir -p "$DIR"/{state,spool,log}  # a fresh cluster state each time
STARTED=()  # PIDs of the daemons this script started, stopped in reverse order

stop_all() {
    local status=$?
    if [ -n "${SLURM_CONF:-}" ] && command -v scancel >/dev/null; then
        scancel --user="$(id -un)" 2>/dev/null || true  # only this private cluster's jobs: it has no others
        for _ in $(seq 20); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 1; done
    fi
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        kill "${STARTED[i]}" 2>/dev/null || true
    done
    for pid in "${STARTED[@]}"; do
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        ! kill -0 "$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    done
    [ ${#STARTED[@]} -eq 0 ] || echo "stopped the daemons started here (PIDs ${STARTED[*]})"
    exit $status
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# munge: reuse a running munged, else start one (Debian's package creates the key)
if ! (munge -n | unmunge) >/dev/null 2>&1; then
    mkdir -p /run/munge /var/log/munge && chown munge:munge /run/munge /var/log/munge
    [ -s /etc/munge/munge.key ] || su -s /bin/sh munge -c "mungekey --create"
    rm -f /run/munge/munged.pid  # a stale one would name the wrong process
    su -s /bin/sh munge -c "/usr/sbin/munged --force"
    for _ in $(seq 20); do [ -s /run/munge/munged.pid ] && break; sleep 0.25; done
    STARTED+=("$(cat /run/munge/munged.pid)")
    (munge -n | unmunge) >/dev/null || { echo "munged does not answer"; exit 1; }
fi

cat >"$DIR/slurm.conf" <<EOF
ClusterName=fednas
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=6917
SlurmdPort=6918
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
PlugStackConfig=$DIR/plugstack.conf
InactiveLimit=0
KillWait=5
MinJobAge=300
# more CPUs than a 2-core machine has, so that 3 one-CPU tasks can be placed at once
SlurmdParameters=config_overrides
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=4 Boards=1 SocketsPerBoard=1 CoresPerSocket=4 ThreadsPerCore=1 RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
touch "$DIR/plugstack.conf"
export SLURM_CONF="$DIR/slurm.conf"

/usr/sbin/slurmctld -D -i -f "$SLURM_CONF" >"$DIR/log/slurmctld.out" 2>&1 &
STARTED+=($!)
/usr/sbin/slurmd -D -f "$SLURM_CONF" >"$DIR/log/slurmd.out" 2>&1 &
STARTED+=($!)
for _ in $(seq 60); do
    [ "$(sinfo -h -n "$NODE" -o %T 2>/dev/null)" = idle ] && break
    sleep 1
done
if [ "$(sinfo -h -n "$NODE" -o %T 2>/dev/null)" != idle ]; then
    echo "SLURM did not come up (node state: $(sinfo -h -o %T 2>&1)); logs in $DIR/log"
    tail -5 "$DIR"/log/*.log
    exit 1
fi
echo "SLURM up: node $NODE idle, SLURM_CONF=$SLURM_CONF, daemons ${STARTED[*]}"

FEDNAS_SLURM_TESTS=1 "$@"
