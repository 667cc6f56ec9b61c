#!/usr/bin/env bash
# Stop what ci/slurm.sh started (every slurmd, slurmctld, by their pid files); munged is left running.
S=${SLURM_STATE:-/var/lib/launch-slurm}
for f in "$S"/slurmd*.pid "$S"/slurmctld.pid; do
  [ -s "$f" ] && kill "$(cat "$f")" 2>/dev/null
done
true
