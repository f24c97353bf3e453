#!/usr/bin/env bash
# Stop the test cluster that tools/slurm/up.sh started: its jobs first, then its daemons (slurmrestd, every node's
# slurmd, slurmctld, then slurmdbd and MariaDB where it keeps accounting, munged), by the pids they wrote.
#
# Why: `make test` starts Slurm before pytest and must leave nothing running after it, whatever pytest's result.
# Only processes named in DIR's pid files are stopped (never by name), so another cluster on the machine is safe.
#
# Usage: tools/slurm/down.sh [DIR] [--purge]    DIR: $GITOPSD_SLURM_DIR, else /tmp/gitopsd-slurm
#        --purge also deletes DIR (keys, state, logs), so the next up.sh starts from nothing.
# Safe to run when nothing is running.
set -uo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
down_args "$@"
DIR=${DIR:-${GITOPSD_SLURM_DIR:-/tmp/gitopsd-slurm}}
[[ $DIR == /* ]] || DIR=$PWD/$DIR
DIR=${DIR%/}
export SLURM_CONF=$DIR/slurm.conf
unset SLURM_JWT

say() { printf '[slurm-down %s] %s\n' "$(date +%T)" "$*" >&2; }

if [[ ! -f $SLURM_CONF ]]; then
  say "no cluster in $DIR: nothing to stop"
else
  if running "$(pid_of "$DIR/run/slurmctld.pid")" slurmctld; then
    # Jobs first, so that no training outlives the daemons that would account for it.
    jobs=$(squeue -h -t PD,R,S,CG,CF -o %A 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ -n ${jobs// /} ]]; then
      say "cancelling jobs $jobs"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 50); do [[ -z $(squeue -h -t R,S,CG,CF -o %A 2>/dev/null) ]] && break; sleep 0.2; done
    fi
  fi
  stop "$DIR/run/slurmrestd.pid" slurmrestd
  while read -r pidfile; do stop_node "$pidfile"; done < <(slurmd_pidfiles "$DIR")
  stop "$DIR/run/slurmctld.pid" slurmctld
  stop "$DIR/run/slurmdbd.pid" slurmdbd
  stop "$DIR/mysql/mariadbd.pid" mariadbd
  stop "$DIR/munge/munged.pid" munged
fi

if ((PURGE)); then
  if [[ -f $DIR/.gitopsd-slurm ]]; then
    rm -rf -- "$DIR" && say "deleted $DIR"
  elif [[ -e $DIR ]]; then
    say "not deleting $DIR: it has no .gitopsd-slurm mark, so up.sh did not make it"
  fi
fi
say "stopped"
