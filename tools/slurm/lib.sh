# Shared by the up.sh and down.sh of tools/slurm and tools/s3 (sourced, not run): read a down.sh's arguments,
# find our daemons by pid file and stop them. The caller defines say() where it stops daemons.

down_args() {  # down_args "$@": sets DIR (the one positional argument, "" if none) and PURGE (1 with --purge)
  DIR="" PURGE=0
  local arg
  for arg in "$@"; do
    case $arg in
      --purge) PURGE=1 ;;
      -*) echo "usage: $0 [DIR] [--purge]" >&2; exit 2 ;;
      *) DIR=$arg ;;
    esac
  done
}

# A daemon is ours and alive when the pid in its pid file runs the expected program and is not a zombie.
running() {  # running PID NAME
  local stat
  [[ $1 =~ ^[0-9]+$ && -r /proc/$1/comm ]] || return 1
  [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat:0:1} != Z ]]
}
pid_of() { [[ -s $1 ]] && tr -dc 0-9 <"$1"; }
stop() {  # stop PIDFILE NAME: TERM, wait up to 15 s (daemons drop their pid file before they exit), then KILL
  local pid
  pid=$(pid_of "$1") || true
  if running "$pid" "$2"; then
    say "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 75); do running "$pid" "$2" || break; sleep 0.2; done
    if running "$pid" "$2"; then
      say "$2 (pid $pid) ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for _ in $(seq 25); do running "$pid" "$2" || break; sleep 0.2; done
    fi
  fi
  rm -f "$1"
}

# The Slurm test cluster's nodes: one slurmd per node, each with its pid file DIR/run/slurmd-NODE.pid (slurm.conf's
# SlurmdPidFile=.../slurmd-%n.pid); DIR/run/slurmd.pid is the single node of an older up.sh.
slurmd_pidfiles() {  # slurmd_pidfiles DIR: every node's slurmd pid file there (maybe gone: its .ns is left)
  local file
  for file in "$1"/run/slurmd-*.pid "$1"/run/slurmd-*.ns "$1"/run/slurmd.pid; do
    file=${file%.ns} && file=${file%.pid}
    [[ -e $file.pid || -e $file.ns ]] && printf '%s.pid\n' "$file"
  done | sort -u
  return 0
}

# A node's namespaces, recorded by up.sh next to its pid file (DIR/run/slurmd-NODE.ns: "mnt:[N] uts:[N]"): every
# process of the node (its slurmd, slurmstepd, every job step) is in them, and only those, even once slurmd is gone.
record_node_ns() {  # record_node_ns PIDFILE
  local pid
  pid=$(pid_of "$1") || return 0
  printf '%s %s\n' "$(readlink "/proc/$pid/ns/mnt")" "$(readlink "/proc/$pid/ns/uts")" >"${1%.pid}.ns"
}
# Kill the processes a node's jobs left behind (cancel them first while slurmctld runs), all but its slurmd; with
# no namespaces recorded (the single node of an older up.sh), every slurmstepd of the cluster and its descendants.
kill_node_jobs() {  # kill_node_jobs PIDFILE
  local pid mnt uts proc left="" own
  pid=$(pid_of "$1") || pid=""
  if [[ -s ${1%.pid}.ns ]]; then
    read -r mnt uts <"${1%.pid}.ns"
    own=$(readlink /proc/self/ns/mnt)
    [[ -n $mnt && $mnt != "$own" ]] || return 0  # never the machine's own namespace
    for proc in /proc/[0-9]*; do
      [[ ${proc#/proc/} != "$pid" && $(readlink "$proc/ns/mnt" 2>/dev/null) == "$mnt" &&
        $(readlink "$proc/ns/uts" 2>/dev/null) == "$uts" ]] && left+="${proc#/proc/} "
    done
  else  # each job's slurmstepd works in the cluster's log directory: those, and every process below them
    local logs roots=""
    logs=$(dirname "$(dirname "$1")")/log
    for proc in /proc/[0-9]*; do
      [[ $(cat "$proc/comm" 2>/dev/null) == slurmstepd && $(readlink "$proc/cwd" 2>/dev/null) == "$logs" ]] &&
        roots+="${proc#/proc/} "
    done
    [[ -n $roots ]] && left=$(ps -e -o pid=,ppid= | awk -v roots="$roots" '
      BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
      { parent[$1] = $2 }
      END { do { grew = 0; for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; grew = 1 } } while (grew)
            for (p in keep) printf "%s ", p }')
  fi
  if [[ -n ${left// /} ]]; then
    say "killing job processes left behind: $left"
    # shellcheck disable=SC2086
    kill -KILL $left 2>/dev/null || true
  fi
}
stop_node() {  # stop_node PIDFILE: its job processes, its slurmd, then whatever outlived that slurmd
  kill_node_jobs "$1"
  stop "$1" slurmd
  kill_node_jobs "$1"
  rm -f "${1%.pid}.ns"
}
