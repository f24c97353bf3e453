#!/usr/bin/env bash
# Stop the S3 server that tools/s3/up.sh started, by the pid it wrote (never by name).
#
# Why: `make test` starts SeaweedFS before pytest and must leave nothing running after it, whatever pytest's
# result; another SeaweedFS on the machine (another DIR) is left alone.
#
# Usage: tools/s3/down.sh [DIR] [--purge]    DIR: $GITOPSD_S3_DIR, else /tmp/gitopsd-s3
#        --purge also deletes DIR (data, secret, logs), so the next up.sh starts from nothing.
# Safe to run when nothing is running.
set -uo pipefail

. "$(dirname "${BASH_SOURCE[0]}")/../slurm/lib.sh"
down_args "$@"
DIR=${DIR:-${GITOPSD_S3_DIR:-/tmp/gitopsd-s3}}
[[ $DIR == /* ]] || DIR=$PWD/$DIR
DIR=${DIR%/}

say() { printf '[s3-down %s] %s\n' "$(date +%T)" "$*" >&2; }

if [[ -f $DIR/weed.pid ]]; then
  stop "$DIR/weed.pid" weed
else
  say "no server in $DIR: nothing to stop"
fi
if ((PURGE)); then
  if [[ -f $DIR/.gitopsd-s3 ]]; then
    rm -rf -- "$DIR" && say "deleted $DIR"
  elif [[ -e $DIR ]]; then
    say "not deleting $DIR: it has no .gitopsd-s3 mark, so up.sh did not make it"
  fi
fi
say "stopped"
