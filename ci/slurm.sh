#!/usr/bin/env bash
# Make sure a real single-node Slurm (Debian's slurm-wlm: munged, slurmctld, slurmd) runs on this machine, for the
# Slurm backend's tests and bench. Idempotent: installs slurm-wlm and munge when missing, writes /etc/slurm/slurm.conf
# (one node with this machine's CPUs and memory, partition `debug`, a count-only GRES of 2 `gpu` so `--gres=gpu:N`
# can be asked for and waited on without a GPU; 512 MB per CPU for a job that names no memory, so jobs share the
# node), and starts what is not running; a changed config restarts the daemons (by their pid files). Run as root.
# Stop: ci/slurm-stop.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi
S=${SLURM_STATE:-/var/lib/launch-slurm}
GPUS=${SLURM_GPUS:-2}
mkdir -p "$S/spool" "$S/state" /etc/slurm /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged 2>/dev/null || munged --force
host=$(hostname -s); cpus=$(nproc); mem=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024 ))
conf=$(cat <<CONF
ClusterName=launch
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
MinJobAge=600
DefMemPerCPU=512
KillWait=5
GresTypes=gpu
SlurmctldLogFile=$S/slurmctld.log
SlurmdLogFile=$S/slurmd.log
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
)
# Slurm drops a GPU GRES with no device files; character devices standing in for GPUs (copies of /dev/null) make a
# count-only GRES that the scheduler counts and hands out (task/none: nothing is fenced off by them).
mkdir -p "$S/dev"
for i in $(seq 0 $((GPUS - 1))); do [ -c "$S/dev/gpu$i" ] || mknod "$S/dev/gpu$i" c 1 3; done
gres="NodeName=$host Name=gpu File=$S/dev/gpu[0-$((GPUS - 1))]"
changed=0
[ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" = "$conf" ] || { echo "$conf" > /etc/slurm/slurm.conf; changed=1; }
[ "$(cat /etc/slurm/gres.conf 2>/dev/null)" = "$gres" ] || { echo "$gres" > /etc/slurm/gres.conf; changed=1; }
running() { [ -s "$S/$1.pid" ] && kill -0 "$(cat "$S/$1.pid")" 2>/dev/null; }
if [ $changed = 1 ]; then
  for d in slurmd slurmctld; do
    if running $d; then
      pid=$(cat "$S/$d.pid"); kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
fi
running slurmctld || slurmctld
running slurmd || slurmd
for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
  case "$state" in idle*|mixed*|alloc*) break ;; down*|drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;; esac
  sleep 1
done
sinfo -h -n "$host" -o %T | grep -qE 'idle|mixed|alloc' || { echo "slurm: node $host is not up:" >&2; sinfo >&2; tail -20 "$S/slurmctld.log" >&2; exit 1; }
echo "slurm: node $host up ($cpus CPUs, ${mem} MB, gpu:$GPUS), partition debug"
