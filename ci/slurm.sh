#!/usr/bin/env bash
# Make sure a real Slurm (Debian's slurm-wlm: munged, slurmctld, slurmd) runs on this machine, for the Slurm
# backend's tests and bench. Idempotent: installs slurm-wlm and munge when missing, writes /etc/slurm/slurm.conf and
# starts what is not running; a changed config restarts the daemons (by their pid files). Run as root.
# The cluster: $SLURM_NODES (2) nodes HOST-1, HOST-2..., each a slurmd of its own on this machine (slurmd -N NAME,
# its own port) with this machine's CPUs and a share of its memory, so multi-node jobs (--nodes 2, srun) run for real;
# partition `debug`; a count-only GRES of 2 `gpu` per node so `--gres=gpu:N` can be asked for and waited on without a
# GPU; 512 MB per CPU for a job that names no memory, so jobs share a node. Stop: ci/slurm-stop.sh.
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/apt.sh"
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt_get update -qq
  apt_get install -y -qq slurm-wlm munge >/dev/null
fi
S=${SLURM_STATE:-/var/lib/launch-slurm}
GPUS=${SLURM_GPUS:-2}
NODES=${SLURM_NODES:-2}
mkdir -p "$S/spool" "$S/state" /etc/slurm /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
fi
pgrep -x munged >/dev/null || su -s /bin/sh munge -c munged 2>/dev/null || munged --force
host=$(hostname -s); cpus=$(nproc); mem=$(( ($(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 1024) / NODES ))
names=$(seq -f "$host-%g" 1 "$NODES" | paste -sd, -)
conf=$(cat <<CONF
ClusterName=launch
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$S/state
SlurmdSpoolDir=$S/spool-%n
SlurmctldPidFile=$S/slurmctld.pid
SlurmdPidFile=$S/slurmd-%n.pid
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
SlurmdLogFile=$S/slurmd-%n.log
$(for i in $(seq 1 "$NODES"); do
  echo "NodeName=$host-$i NodeHostname=$host NodeAddr=127.0.0.1 Port=$((6817 + 2 * i)) CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS State=UNKNOWN"
done)
PartitionName=debug Nodes=$names Default=YES MaxTime=INFINITE State=UP
CONF
)
# Slurm drops a GPU GRES with no device files; character devices standing in for GPUs (copies of /dev/null) make a
# count-only GRES that the scheduler counts and hands out (task/none: nothing is fenced off by them).
mkdir -p "$S/dev"
gres=""
for i in $(seq 1 "$NODES"); do
  first=$(( (i - 1) * GPUS )); last=$(( i * GPUS - 1 ))
  for g in $(seq $first $last); do [ -c "$S/dev/gpu$g" ] || mknod "$S/dev/gpu$g" c 1 3; done
  gres="$gres${gres:+
}NodeName=$host-$i Name=gpu File=$S/dev/gpu[$first-$last]"
done
changed=0
[ "$(cat /etc/slurm/slurm.conf 2>/dev/null)" = "$conf" ] || { echo "$conf" > /etc/slurm/slurm.conf; changed=1; }
[ "$(cat /etc/slurm/gres.conf 2>/dev/null)" = "$gres" ] || { echo "$gres" > /etc/slurm/gres.conf; changed=1; }
running() { [ -s "$S/$1.pid" ] && kill -0 "$(cat "$S/$1.pid")" 2>/dev/null; }
daemons="slurmctld $(for i in $(seq 1 "$NODES"); do echo "slurmd-$host-$i"; done)"
if [ $changed = 1 ]; then
  for d in $daemons slurmd; do  # slurmd.pid: a single slurmd an older version of this script started
    if running $d; then
      pid=$(cat "$S/$d.pid"); kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
fi
running slurmctld || slurmctld
for i in $(seq 1 "$NODES"); do running "slurmd-$host-$i" || slurmd -N "$host-$i"; done
for _ in $(seq 1 60); do
  states=$(sinfo -h -N -o %T 2>/dev/null | sort -u | paste -sd' ' - || true)
  case "$states" in *down*|*drain*|*inval*) scontrol update nodename="$names" state=resume 2>/dev/null || true ;; esac
  [ "$(sinfo -h -N -o %T 2>/dev/null | grep -cE 'idle|mixed|alloc')" = "$NODES" ] && break
  sleep 1
done
[ "$(sinfo -h -N -o %T | grep -cE 'idle|mixed|alloc')" = "$NODES" ] || {
  echo "slurm: the nodes are not up:" >&2; sinfo -N >&2; tail -20 "$S/slurmctld.log" >&2; exit 1; }
echo "slurm: nodes $names up ($cpus CPUs, ${mem} MB, gpu:$GPUS each), partition debug"
