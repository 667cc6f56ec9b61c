#!/usr/bin/env bash
# Stop what ci/slurm.sh started (slurmd, slurmctld, by their pid files); munged is left running.
S=${SLURM_STATE:-/var/lib/launch-slurm}
for d in slurmd slurmctld; do
  [ -s "$S/$d.pid" ] && kill "$(cat "$S/$d.pid")" 2>/dev/null
done
true
