#!/usr/bin/env bash
# Start a real multi-node Slurm 22.05 cluster on one machine for gitopsd's tests, CI and benchmarks (Debian 12,
# as root).
#
# Why: the Slurm backend is tested against the real thing (sbatch, squeue --json, scancel, sacct -c and
# slurmrestd with JWT), not against mocks, and on a real cluster the login node that runs gitopsd is not the
# compute node that runs the job: a job sees the shared filesystem, never the daemon's state directory. This
# script shows that on one machine. It installs what is missing from Debian's packages, writes every config
# under one directory, and starts munged, slurmctld and slurmrestd as plain background daemons (no systemd, no
# cgroups) plus one slurmd per node, and, for accounting, slurmdbd with a private MariaDB. Each node runs in its
# own UTS and mount namespace: its hostname is nodeI, it listens on 127.0.0.1 with a port of its own (no network
# namespace), it resolves node1..nodeN through its own /etc/hosts, and an empty read-only tmpfs covers DIR/private,
# the stand-in for the daemon's state directory and credentials. Everything else (DIR/shared, the run root shared
# with the login node; the munge socket; the rest of the filesystem) looks the same on every node. Jobs inherit
# their node's namespaces. Each node has a few fake GPUs. The script waits until every node is idle and REST
# answers. It is idempotent: running daemons are kept, and restarted only when the generated config changed (then the
# jobs running on the nodes are killed).
#
# Usage:  tools/slurm/up.sh [DIR]          DIR: $GITOPSD_SLURM_DIR, else /tmp/gitopsd-slurm
#         set -a; . DIR/env.sh; set +a     SLURM_CONF, SLURMRESTD_URL, SLURMRESTD_TOKEN, GITOPSD_SLURM_SHARED, ...
# Stop:   tools/slurm/down.sh [DIR] [--purge]
#
# Settings (environment, else what the last up.sh in DIR used (DIR/up.env), else the default; the defaults keep
# a test run short on a 2-core machine):
#   GITOPSD_SLURM_NODES=2         nodes (node1..nodeN), 1 to 64
#   GITOPSD_SLURM_CPUS=8          CPUs each node declares (more than the machine has is fine)
#   GITOPSD_SLURM_MEM_MB=4096     RealMemory of each node
#   GITOPSD_SLURM_GPUS=2          fake GPUs per node (gres/gpu on /dev/null symlinks); 0 for none
#   GITOPSD_SLURM_MIN_JOB_AGE=300 seconds a finished job stays in squeue / REST
#   GITOPSD_SLURM_PORTS=6817,6818,6820   slurmctld, the first slurmd, slurmrestd (all on 127.0.0.1); node I
#                                 listens on the I-th port from the first slurmd's, skipping the other two
#   GITOPSD_SLURM_TOKEN_USER=root GITOPSD_SLURM_TOKEN_LIFESPAN=86400   the REST token written to env.sh
#   GITOPSD_SLURM_ACCOUNTING=1    1: accounting as real clusters keep it: slurmdbd on a private MariaDB (its data in
#                                 DIR/mysql), job records for sacct, associations enforced at submit
#                                 (AccountingStorageEnforce=associations; root has one); 0: none (sacct -c reads
#                                 the job-completion file; sacctmgr answers nothing)
#   GITOPSD_SLURM_DB_PORTS=6816,3307   slurmdbd, MariaDB (both on 127.0.0.1), with accounting
#   GITOPSD_SLURM_NO_INSTALL=1    fail instead of calling apt-get
# A second cluster beside the first needs another DIR and other ports, e.g.
#   GITOPSD_SLURM_PORTS=7817,7818,7820 GITOPSD_SLURM_DB_PORTS=7816,3317 tools/slurm/up.sh /tmp/slurm-b
set -euo pipefail

DIR=${1:-${GITOPSD_SLURM_DIR:-/tmp/gitopsd-slurm}}
REST_USER=nobody
API=v0.0.38
PACKAGES=(munge slurmctld slurmd slurm-client slurmrestd slurm-wlm-jwt-plugin curl lmod)
ACCOUNTING_PACKAGES=(slurmdbd slurm-wlm-mysql-plugin mariadb-server)
SETTINGS=(NODES CPUS MEM_MB GPUS MIN_JOB_AGE PORTS TOKEN_USER TOKEN_LIFESPAN ACCOUNTING DB_PORTS)

say() { printf '[slurm-up %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }
show_log() { [[ -f $1 ]] && { say "last lines of $1:"; tail -n 20 "$1" >&2; }; return 0; }

[[ $(id -u) -eq 0 ]] || fail "run me as root (I install Debian packages and start Slurm's daemons)"
[[ $DIR == /* ]] || DIR=$PWD/$DIR
DIR=${DIR%/}
[[ $DIR != "" && $DIR != / ]] || fail "refusing to use / as the cluster directory"
[[ $DIR =~ ^[A-Za-z0-9/._-]+$ ]] || fail "the cluster directory may hold only letters, digits and / . _ -: $DIR"
CONF=$DIR/slurm.conf
SHARED=$DIR/shared
PRIVATE=$DIR/private
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
  if [[ -f $1 && $(cat "$1") == "$(printf '%s' "$2")" ]]; then return 1; fi  # both without trailing newlines
  printf '%s\n' "$2" >"$1"
}
# A setting: the environment's GITOPSD_SLURM_NAME, else the value DIR/up.env kept, else the default.
setting() {  # setting NAME DEFAULT
  local var=GITOPSD_SLURM_$1 value
  value=${!var:-}
  [[ -n $value || ! -f $DIR/up.env ]] || value=$(sed -n "s/^$var=//p" "$DIR/up.env" | tail -n 1)
  printf '%s' "${value:-$2}"
}
number() {  # number NAME VALUE MIN MAX: fail unless VALUE is an integer in [MIN, MAX]
  [[ $2 =~ ^[0-9]+$ ]] && (($2 >= $3 && $2 <= $4)) || fail "GITOPSD_SLURM_$1=$2: expected a number from $3 to $4"
}

NODES=$(setting NODES 2)
CPUS=$(setting CPUS 8)
MEM_MB=$(setting MEM_MB 4096)
GPUS=$(setting GPUS 2)
MIN_JOB_AGE=$(setting MIN_JOB_AGE 300)
PORTS=$(setting PORTS 6817,6818,6820)
TOKEN_USER=$(setting TOKEN_USER root)
TOKEN_LIFESPAN=$(setting TOKEN_LIFESPAN 86400)
ACCOUNTING=$(setting ACCOUNTING 1)
DB_PORTS=$(setting DB_PORTS 6816,3307)
NO_INSTALL=${GITOPSD_SLURM_NO_INSTALL:-0}
number NODES "$NODES" 1 64
number CPUS "$CPUS" 1 4096
number MEM_MB "$MEM_MB" 1 1073741824
number GPUS "$GPUS" 0 64
number MIN_JOB_AGE "$MIN_JOB_AGE" 0 86400
number TOKEN_LIFESPAN "$TOKEN_LIFESPAN" 60 31536000
[[ $TOKEN_USER =~ ^[A-Za-z0-9_.-]+$ ]] || fail "GITOPSD_SLURM_TOKEN_USER=$TOKEN_USER: expected a user name"
[[ $PORTS =~ ^[0-9]+,[0-9]+,[0-9]+$ ]] || fail "GITOPSD_SLURM_PORTS=$PORTS: expected SLURMCTLD,SLURMD,SLURMRESTD"
IFS=, read -r CTLD_PORT SLURMD_PORT REST_PORT <<<"$PORTS"
[[ $ACCOUNTING =~ ^[01]$ ]] || fail "GITOPSD_SLURM_ACCOUNTING=$ACCOUNTING: expected 1 (slurmdbd) or 0 (none)"
[[ $DB_PORTS =~ ^[0-9]+,[0-9]+$ ]] || fail "GITOPSD_SLURM_DB_PORTS=$DB_PORTS: expected SLURMDBD,MARIADB"
IFS=, read -r DBD_PORT DB_PORT <<<"$DB_PORTS"
OWN_PORTS=("$CTLD_PORT" "$REST_PORT")  # the nodes' ports skip these
((ACCOUNTING)) && OWN_PORTS+=("$DBD_PORT" "$DB_PORT")
NODE_NAMES=() NODE_PORTS=()
port=$SLURMD_PORT
for ((i = 1; i <= NODES; i++)); do
  while [[ " ${OWN_PORTS[*]} " == *" $port "* ]]; do port=$((port + 1)); done
  NODE_NAMES+=("node$i") NODE_PORTS+=("$port")
  port=$((port + 1))
done
for port in "$CTLD_PORT" "$REST_PORT" "${NODE_PORTS[@]}"; do number PORTS "$port" 1024 65535; done
((CTLD_PORT != REST_PORT)) || fail "GITOPSD_SLURM_PORTS=$PORTS: slurmctld and slurmrestd need ports of their own"
if ((ACCOUNTING)); then
  for port in "$DBD_PORT" "$DB_PORT"; do number DB_PORTS "$port" 1024 65535; done
  [[ $(printf '%s\n' "${OWN_PORTS[@]}" | sort -u | wc -l) == 4 ]] ||
    fail "GITOPSD_SLURM_DB_PORTS=$DB_PORTS: slurmdbd and MariaDB need ports of their own (not in $PORTS)"
  PACKAGES+=("${ACCOUNTING_PACKAGES[@]}")
fi
NODE_LIST=$(IFS=,; echo "${NODE_NAMES[*]}")

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
for tool in unshare hostname mount; do command -v "$tool" >/dev/null || fail "$tool is missing (util-linux)"; done

# -- 2. files ----------------------------------------------------------------------------------------------
install -d -m 755 "$DIR" "$DIR/dev" "$DIR/spool"
install -d -m 755 -o slurm -g slurm "$DIR/state" "$DIR/log" "$DIR/run"
install -d -m 755 -o munge -g munge "$DIR/munge"  # munged wants its socket's directory world-searchable
install -d -m 1777 "$SHARED" "$PRIVATE"           # like /tmp: any user's tests may make their directories here
touch "$DIR/.gitopsd-slurm"                         # down.sh --purge deletes only directories with this mark
[[ -s $DIR/munge/munge.key ]] || head -c 1024 /dev/urandom >"$DIR/munge/munge.key"
chown munge:munge "$DIR/munge/munge.key" && chmod 600 "$DIR/munge/munge.key"
[[ -s $DIR/jwt.key ]] || head -c 64 /dev/urandom >"$DIR/jwt.key"
chown slurm:slurm "$DIR/jwt.key" && chmod 600 "$DIR/jwt.key"
SOCKET=$DIR/munge/munge.socket
saved=""
for name in "${SETTINGS[@]}"; do saved+="GITOPSD_SLURM_$name=${!name}"$'\n'; done
put "$DIR/up.env" "# The settings of the last tools/slurm/up.sh here; the environment overrides them.
${saved%$'\n'}" || true

gres_line="" node_gres="" gres="AutoDetect=off"
if ((GPUS > 0)); then
  gres_line="GresTypes=gpu" node_gres=" Gres=gpu:$GPUS"
fi
accounting="AccountingStorageType=accounting_storage/none"
if ((ACCOUNTING)); then
  # slurmctld reaches slurmdbd with munge, but not through AuthInfo's socket: AccountingStoragePass names it.
  # The job's comment (gitopsd's run id) is kept only with job_comment.
  accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$SOCKET
AccountingStorageEnforce=associations
AccountingStoreFlags=job_comment"
  ((GPUS > 0)) && accounting+=$'\n'"AccountingStorageTRES=gres/gpu"
fi
nodes=""
for ((i = 0; i < NODES; i++)); do
  node=${NODE_NAMES[i]}
  install -d -m 755 "$DIR/spool/$node" "$DIR/dev/$node"
  nodes+="NodeName=$node NodeHostname=$node NodeAddr=127.0.0.1 Port=${NODE_PORTS[i]} CPUs=$CPUS RealMemory=$MEM_MB"
  nodes+="$node_gres State=UNKNOWN"$'\n'
  if ((GPUS > 0)); then
    # Slurm wants a character device behind each GPU; /dev/null is one, so jobs get CUDA_VISIBLE_DEVICES.
    for ((g = 0; g < GPUS; g++)); do ln -sfn /dev/null "$DIR/dev/$node/nvidia$g"; done
    gres+=$'\n'"NodeName=$node Name=gpu File=$DIR/dev/$node/nvidia[0-$((GPUS - 1))]"
  fi
done
config="# Written by gitopsd's tools/slurm/up.sh: a test cluster of $NODES nodes on one machine. Edits are overwritten.
ClusterName=gitopsd
SlurmctldHost=localhost
SlurmUser=slurm
SlurmctldPort=$CTLD_PORT
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key=$DIR/jwt.key
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$accounting
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
${nodes%$'\n'}
PartitionName=debug Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP"
# Inside the nodes (their mount namespace only), node1..nodeN resolve to 127.0.0.1, e.g. for MASTER_ADDR=node1.
hosts="127.0.0.1 localhost ${NODE_NAMES[*]}
$(grep -v '^[[:space:]]*127\.0\.0\.1[[:space:]]' /etc/hosts || true)"
changed=0
put "$CONF" "$config" && changed=1
put "$DIR/gres.conf" "$gres" && changed=1
put "$DIR/hosts" "$hosts" && changed=1
chmod 644 "$CONF" "$DIR/gres.conf" "$DIR/hosts"
if ((changed)); then  # a new config takes effect on a restart
  stop "$DIR/run/slurmrestd.pid" slurmrestd
  # A node restarts in new namespaces, so its running jobs would be left in the old ones: they are killed.
  while read -r pidfile; do stop_node "$pidfile"; done < <(slurmd_pidfiles "$DIR")
  stop "$DIR/run/slurmctld.pid" slurmctld
fi
MYSQL=$DIR/mysql
daemons=("slurmctld:slurmctld:$CTLD_PORT" "slurmrestd:slurmrestd:$REST_PORT")
for ((i = 0; i < NODES; i++)); do daemons+=("slurmd-${NODE_NAMES[i]}:slurmd:${NODE_PORTS[i]}"); done
((ACCOUNTING)) && daemons+=("slurmdbd:slurmdbd:$DBD_PORT" "$MYSQL/mariadbd.pid:mariadbd:$DB_PORT")
for entry in "${daemons[@]}"; do
  IFS=: read -r file name port <<<"$entry"
  [[ $file == /* ]] || file=$DIR/run/$file.pid
  if ! up "$file" "$name" && port_open "$port"; then
    fail "port $port is taken, but $name of $DIR is not running: another cluster? (its down.sh stops it;" \
      "GITOPSD_SLURM_PORTS and GITOPSD_SLURM_DB_PORTS choose others)"
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

# Accounting: MariaDB (its own datadir and port, root by unix socket only), then slurmdbd, before slurmctld, which
# registers the cluster and root's association there when it connects.
if ((ACCOUNTING)); then
  sql() { mariadb --no-defaults -S "$MYSQL/mysqld.sock" -u root "$@"; }
  install -d -m 750 -o mysql -g mysql "$MYSQL"
  if [[ ! -d $MYSQL/mysql ]]; then
    mariadb-install-db --no-defaults --user=mysql --datadir="$MYSQL" --skip-test-db --skip-name-resolve \
      --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 ||
      { show_log "$DIR/log/mariadb-install.log"; fail "mariadb-install-db did not make $MYSQL"; }
  fi
  if ! up "$MYSQL/mariadbd.pid" mariadbd; then
    (cd / && exec setsid mariadbd --no-defaults --user=mysql --datadir="$MYSQL" --socket="$MYSQL/mysqld.sock" \
      --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$MYSQL/mariadbd.pid" \
      --log-error="$MYSQL/mariadb.err" --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 \
      </dev/null >/dev/null 2>&1) &
  fi
  wait_for 150 sql -e 'SELECT 1' >/dev/null 2>&1 || { show_log "$MYSQL/mariadb.err"; fail "MariaDB is not up"; }
  [[ -s $DIR/db.pass ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$DIR/db.pass")
  DB_PASS=$(cat "$DIR/db.pass")
  sql -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || fail "MariaDB refused to make its slurm user"
  # slurmdbd reads slurmdbd.conf beside slurm.conf (SLURM_CONF), and only when the slurm user alone may read it.
  dbd_conf="# Written by gitopsd's tools/slurm/up.sh. Edits are overwritten.
AuthType=auth/munge
AuthInfo=socket=$SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=slurm
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db"
  (umask 077 && put "$DIR/slurmdbd.conf" "$dbd_conf") && stop "$DIR/run/slurmdbd.pid" slurmdbd
  chown slurm:slurm "$DIR/slurmdbd.conf" && chmod 600 "$DIR/slurmdbd.conf"
  if ! up "$DIR/run/slurmdbd.pid" slurmdbd; then
    slurmdbd || { show_log "$DIR/log/slurmdbd.log"; fail "slurmdbd did not start"; }
  fi
  wait_for 100 port_open "$DBD_PORT" || { show_log "$DIR/log/slurmdbd.log"; fail "slurmdbd does not listen"; }
else  # accounting switched off: stop what an earlier GITOPSD_SLURM_ACCOUNTING=1 started here
  stop "$DIR/run/slurmdbd.pid" slurmdbd
  stop "$MYSQL/mariadbd.pid" mariadbd
fi

ctld_ok() { scontrol ping 2>/dev/null | grep -q 'is UP'; }
if ! up "$DIR/run/slurmctld.pid" slurmctld; then
  slurmctld -f "$CONF" || { show_log "$DIR/log/slurmctld.log"; fail "slurmctld did not start"; }
fi
wait_for 100 ctld_ok || { show_log "$DIR/log/slurmctld.log"; fail "slurmctld does not answer 'scontrol ping'"; }
if ((ACCOUNTING)); then  # root's association: the cluster is registered, and root's jobs are accepted
  root_assoc() { [[ -n $(sacctmgr -n -P show assoc user=root cluster=gitopsd format=account 2>/dev/null) ]]; }
  wait_for 150 root_assoc || { show_log "$DIR/log/slurmdbd.log"; fail "slurmdbd has no association for root"; }
fi

# A node: slurmd in new UTS and mount namespaces, where it sets its hostname, hides PRIVATE under an empty
# read-only tmpfs and puts DIR/hosts over /etc/hosts; then it daemonizes, and its jobs inherit all of that.
start_node() {  # start_node NODE
  unshare --uts --mount --propagation private -- /bin/sh -c '
    set -e
    hostname "$1"
    mount -t tmpfs -o ro,mode=755,size=64k gitopsd-private "$2"
    mount --bind "$3" /etc/hosts
    exec slurmd -f "$4" -N "$1"' sh "$1" "$PRIVATE" "$DIR/hosts" "$CONF" </dev/null >>"$DIR/log/slurmd-$1.start" 2>&1
}
node_ok() {  # node_ok NODE: the controller sees it ready for jobs
  [[ $(sinfo -h -N -n "$1" -o %T 2>/dev/null | head -n 1) =~ ^(idle|mixed|allocated|completing)$ ]]
}
for node in "${NODE_NAMES[@]}"; do
  if ! up "$DIR/run/slurmd-$node.pid" slurmd; then
    start_node "$node" || { show_log "$DIR/log/slurmd-$node.start"; fail "slurmd of $node did not start"; }
  fi
done
for node in "${NODE_NAMES[@]}"; do
  wait_for 50 test -s "$DIR/run/slurmd-$node.pid" && record_node_ns "$DIR/run/slurmd-$node.pid"
  if ! wait_for 50 node_ok "$node"; then
    scontrol update nodename="$node" state=resume 2>/dev/null || true  # e.g. down after an unclean stop
    wait_for 100 node_ok "$node" || {
      show_log "$DIR/log/slurmd-$node.log"
      fail "node $node is $(sinfo -h -N -n "$node" -o %T 2>/dev/null | head -n 1 || echo unknown), not idle"
    }
  fi
done

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
# GITOPSD_SLURM_SHARED: a run root every node sees (a backend's runs_dir); GITOPSD_SLURM_PRIVATE: a directory
# no node sees (where tests put state directories, as a login node's local disk).
umask 077
cat >"$DIR/env.sh" <<EOF
GITOPSD_SLURM_DIR=$DIR
SLURM_CONF=$CONF
SLURMRESTD_URL=$URL
SLURMRESTD_API_VERSION=$API
SLURMRESTD_USER=$TOKEN_USER
SLURMRESTD_TOKEN=$TOKEN
GITOPSD_SLURM_NODE_NAMES=$NODE_LIST
GITOPSD_SLURM_SHARED=$SHARED
GITOPSD_SLURM_PRIVATE=$PRIVATE
EOF
kept="no accounting"
((ACCOUNTING)) && kept="slurmdbd on $DBD_PORT (MariaDB on $DB_PORT)"
say "Slurm is up: nodes $NODE_LIST (ports ${NODE_PORTS[*]}) with $CPUS CPUs and $GPUS GPUs each," \
  "slurmctld on $CTLD_PORT, REST at $URL, $kept; environment in $DIR/env.sh"
cat "$DIR/env.sh"
