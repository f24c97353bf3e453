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
slurmd_pidfiles() {  # slurmd_pidfiles DIR: every slurmd pid file there, one a line
  local file
  for file in "$1"/run/slurmd-*.pid "$1"/run/slurmd.pid; do
    [[ -e $file ]] && printf '%s\n' "$file"
  done
  return 0
}
