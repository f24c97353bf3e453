#!/usr/bin/env bash
# Start a real single-node Slurm 22.05 cluster for gitopsd's tests, CI and benchmarks (Debian 12, as root).
#
# Why: the Slurm backend is tested against the real thing (sbatch, squeue --json, scancel, sacct -c and
# slurmrestd with JWT), not against mocks. This script installs what is missing from Debian's packages,
# writes every config under one directory, starts munged, slurmctld, slurmd and slurmrestd as plain
# background daemons (no systemd, no cgroups), with a few fake GPUs, and waits until a job can run.
# It is idempotent: running daemons are kept, and restarted only when the generated config changed.
#
# Usage:  tools/slurm/up.sh [DIR]          DIR: $GITOPSD_SLURM_DIR, else /tmp/gitopsd-slurm
#         set -a; . DIR/env.sh; set +a     SLURM_CONF, SLURMRESTD_URL, SLURMRESTD_USER, SLURMRESTD_TOKEN, ...
# Stop:   tools/slurm/down.sh [DIR] [--purge]
#
# Settings (environment; the defaults keep a test run short on a 2-core machine):
#   GITOPSD_SLURM_CPUS=8          CPUs the node declares (more than the machine has is fine)
#   GITOPSD_SLURM_MEM_MB=4096     RealMemory of the node
#   GITOPSD_SLURM_GPUS=2          fake GPUs (gres/gpu on /dev/null symlinks); 0 for none
#   GITOPSD_SLURM_MIN_JOB_AGE=300 seconds a finished job stays in squeue / REST
#   GITOPSD_SLURM_PORTS=6817,6818,6820   slurmctld, slurmd, slurmrestd (slurmrestd on 127.0.0.1)
#   GITOPSD_SLURM_TOKEN_USER=root GITOPSD_SLURM_TOKEN_LIFESPAN=86400   the REST token written to env.sh
#   GITOPSD_SLURM_NO_INSTALL=1    fail instead of calling apt-get
set -euo pipefail

DIR=${1:-${GITOPSD_SLURM_DIR:-/tmp/gitopsd-slurm}}
CPUS=${GITOPSD_SLURM_CPUS:-8}
MEM_MB=${GITOPSD_SLURM_MEM_MB:-4096}
GPUS=${GITOPSD_SLURM_GPUS:-2}
MIN_JOB_AGE=${GITOPSD_SLURM_MIN_JOB_AGE:-300}
IFS=, read -r CTLD_PORT SLURMD_PORT REST_PORT <<<"${GITOPSD_SLURM_PORTS:-6817,6818,6820}"
TOKEN_USER=${GITOPSD_SLURM_TOKEN_USER:-root}
TOKEN_LIFESPAN=${GITOPSD_SLURM_TOKEN_LIFESPAN:-86400}
NO_INSTALL=${GITOPSD_SLURM_NO_INSTALL:-0}
REST_USER=nobody
NODE=localhost
API=v0.0.38
PACKAGES=(munge slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin curl)

say() { printf '[slurm-up %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }
show_log() { [[ -f $1 ]] && { say "last lines of $1:"; tail -n 20 "$1" >&2; }; return 0; }

[[ $(id -u) -eq 0 ]] || fail "run me as root (I install Debian packages and start Slurm's daemons)"
[[ $DIR == /* ]] || DIR=$PWD/$DIR
DIR=${DIR%/}
[[ $DIR != "" && $DIR != / ]] || fail "refusing to use / as the cluster directory"
CONF=$DIR/slurm.conf
export SLURM_CONF=$CONF
unset SLURM_JWT  # with it set, the CLIs would authenticate by JWT instead of munge

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
up() { running "$(pid_of "$1")" "$2"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() {  # wait_for TRIES COMMAND...: retry every 0.2 s
  local tries=$1
  shift
  for _ in $(seq "$tries"); do "$@" && return 0; sleep 0.2; done
  return 1
}
# Write a file only when its content changes; say whether it did.
put() {  # put FILE CONTENT
  if [[ -f $1 && $(cat "$1") == "$2" ]]; then return 1; fi
  printf '%s\n' "$2" >"$1"
}

# -- 1. Debian packages ------------------------------------------------------------------------------------
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
  [[ $NO_INSTALL == 1 ]] && fail "missing Debian packages: ${missing[*]} (GITOPSD_SLURM_NO_INSTALL=1)"
  say "installing ${missing[*]}"
  # No init system here: keep the packages' maintainer scripts from starting the daemons themselves.
  guard=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && guard=1
  fi
  status=0
  apt-get update -qq >&2 || status=$?
  if ((status == 0)); then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 || status=$?
  fi
  ((guard)) && rm -f /usr/sbin/policy-rc.d
  ((status == 0)) || fail "apt-get failed with status $status"
fi
version=$(slurmctld -V 2>/dev/null || true)
[[ $version == *" 22.05."* ]] || say "note: tested with Slurm 22.05, found '$version'"

# -- 2. files ----------------------------------------------------------------------------------------------
install -d -m 755 "$DIR" "$DIR/dev" "$DIR/spool"
install -d -m 755 -o slurm -g slurm "$DIR/state" "$DIR/log" "$DIR/run"
install -d -m 755 -o munge -g munge "$DIR/munge"  # munged wants its socket's directory world-searchable
touch "$DIR/.gitopsd-slurm"                         # down.sh --purge deletes only directories with this mark
[[ -s $DIR/munge/munge.key ]] || head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
chown munge:munge "$DIR/munge/munge.key" && chmod 600 "$DIR/munge/munge.key"
[[ -s $DIR/jwt.key ]] || head -c 64 /dev/urandom >"$DIR/jwt.key"
chown slurm:slurm "$DIR/jwt.key" && chmod 600 "$DIR/jwt.key"
SOCKET=$DIR/munge/munge.socket

gres_line="" node_gres=""
if ((GPUS > 0)); then
  # Slurm wants a character device behind each GPU; /dev/null is one, so jobs get CUDA_VISIBLE_DEVICES.
  for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$DIR/dev/nvidia$i"; done
  gres_line="GresTypes=gpu" node_gres=" Gres=gpu:$GPUS"
fi
config="# Written by gitopsd's tools/slurm/up.sh: a single-node test cluster. Edits are overwritten.
ClusterName=gitopsd
SlurmctldHost=$NODE
SlurmUser=slurm
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$DIR/jwt.key
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.txt
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=$MIN_JOB_AGE
KillWait=2
OverTimeLimit=0
InactiveLimit=0
MessageTimeout=5
$gres_line
NodeName=$NODE CPUs=$CPUS RealMemory=$MEM_MB$node_gres State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP"
gres="AutoDetect=off"
((GPUS > 0)) && gres+=$'\n'"NodeName=$NODE Name=gpu File=$DIR/dev/nvidia[0-$((GPUS - 1))]"
changed=0
put "$CONF" "$config" && changed=1
put "$DIR/gres.conf" "$gres" && changed=1
chmod 644 "$CONF" "$DIR/gres.conf"
if ((changed)); then  # a new config takes effect on a restart
  stop "$DIR/run/slurmrestd.pid" slurmrestd
  stop "$DIR/run/slurmd.pid" slurmd
  stop "$DIR/run/slurmctld.pid" slurmctld
fi
for pair in "slurmctld:$CTLD_PORT" "slurmd:$SLURMD_PORT" "slurmrestd:$REST_PORT"; do
  name=${pair%:*} port=${pair#*:}
  if ! up "$DIR/run/$name.pid" "$name" && port_open "$port"; then
    fail "port $port is taken, but $name of $DIR is not running: another cluster? (its down.sh stops it)"
  fi
done

# -- 3. daemons ----------------------------------------------------------------------------------------------
munge_ok() { munge -S "$SOCKET" -n 2>/dev/null | unmunge -S "$SOCKET" >/dev/null 2>&1; }
if ! up "$DIR/munge/munged.pid" munged; then
  rm -f "$SOCKET" "$SOCKET.lock"
  runuser -u munge -- munged --socket="$SOCKET" --key-file="$DIR/munge/munge.key" \
    --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/seed" ||
    { show_log "$DIR/munge/munged.log"; fail "munged did not start"; }
fi
wait_for 50 munge_ok || fail "munge cannot encode and decode a credential on $SOCKET"

ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
if ! up "$DIR/run/slurmctld.pid" slurmctld; then
  slurmctld -f "$CONF" || { show_log "$DIR/log/slurmctld.log"; fail "slurmctld did not start"; }
fi
wait_for 100 ctld_ok || { show_log "$DIR/log/slurmctld.log"; fail "slurmctld does not answer 'scontrol ping'"; }

node_ok() { [[ $(sinfo -h -n "$NODE" -o %T 2>/dev/null) =~ ^(idle|mixed|allocated|completing) ]]; }
if ! up "$DIR/run/slurmd.pid" slurmd; then
  slurmd -f "$CONF" -N "$NODE" || { show_log "$DIR/log/slurmd.log"; fail "slurmd did not start"; }
fi
if ! wait_for 50 node_ok; then
  scontrol update nodename="$NODE" state=resume 2>/dev/null || true  # e.g. down after an unclean stop
  wait_for 100 node_ok || {
    show_log "$DIR/log/slurmd.log"
    fail "node $NODE is $(sinfo -h -n "$NODE" -o %T 2>/dev/null || echo unknown), not idle"
  }
fi

URL=http://127.0.0.1:$REST_PORT
rest_ok() { [[ $(curl -s -o /dev/null -w '%{http_code}' "$URL/openapi/v3") != 000 ]]; }  # any HTTP answer
if ! up "$DIR/run/slurmrestd.pid" slurmrestd; then
  # slurmrestd refuses to run as root; -u drops to an unprivileged user once the port is bound.
  # SLURM_JWT=daemon makes it take the user and token from the X-SLURM-USER-NAME/-TOKEN headers.
  (cd / && SLURM_JWT=daemon exec setsid slurmrestd -f "$CONF" -u "$REST_USER" -s "openapi/$API" \
    -a rest_auth/jwt "127.0.0.1:$REST_PORT" >>"$DIR/log/slurmrestd.log" 2>&1 </dev/null) &
  echo $! >"$DIR/run/slurmrestd.pid"
fi
wait_for 100 rest_ok || { show_log "$DIR/log/slurmrestd.log"; fail "slurmrestd does not answer on $URL"; }

TOKEN=$(scontrol token username="$TOKEN_USER" lifespan="$TOKEN_LIFESPAN" | sed -n 's/^SLURM_JWT=//p')
[[ -n $TOKEN ]] || fail "scontrol token gave no token"
code=$(curl -s -o /dev/null -w '%{http_code}' -H "X-SLURM-USER-NAME: $TOKEN_USER" -H "X-SLURM-USER-TOKEN: $TOKEN" \
  "$URL/slurm/$API/ping")
[[ $code == 200 ]] || { show_log "$DIR/log/slurmrestd.log"; fail "REST ping with a fresh token gave HTTP $code"; }

# -- 4. what clients need ------------------------------------------------------------------------------------
# SLURM_JWT is not exported on purpose: the CLIs would use it instead of munge. REST clients get the token.
umask 077
cat >"$DIR/env.sh" <<EOF
GITOPSD_SLURM_DIR=$DIR
SLURM_CONF=$CONF
SLURMRESTD_URL=$URL
SLURMRESTD_API_VERSION=$API
SLURMRESTD_USER=$TOKEN_USER
SLURMRESTD_TOKEN=$TOKEN
EOF
say "Slurm is up: node $NODE with $CPUS CPUs and $GPUS GPUs, REST at $URL; environment in $DIR/env.sh"
cat "$DIR/env.sh"
