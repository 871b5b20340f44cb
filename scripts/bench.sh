#!/usr/bin/env bash
# Benchmarks dbbackup against pgBackRest on the same machine, data and run.
# Reports ratios (machines here are shared and noisy: absolute times vary).
#
#   archive: median latency to archive one real 16 MiB segment
#            (dbbackup default zstd, lz4, encrypted; pgBackRest archive-push lz4)
#   fetch:   median latency to fetch it back (archive-get)
#   size:    repository bytes for the same segments
#   memory:  peak RSS of one archive and one fetch
#   backup and restore of a ~1.5 GB pgbench cluster, 2 jobs / 2 processes
#   incr:    incremental backups of the same cluster: 1 % of pgbench_accounts'
#            rows updated (BENCH_INCR_WHERE, default "aid % 100 = 0"), the
#            8 KiB blocks that changed counted by hashing the relation files
#            before and after; dbbackup --type incr (time, peak RSS, stored
#            bytes) against its full and against pgBackRest --type=incr
#            (file level); three rounds, then the restore of the full +
#            3 incr chain against the restore of a full of the same data
#   S3:      archive, fetch, backup and restore again with the repositories
#            in a one-node Garage on loopback: pgBackRest over https (it
#            speaks S3 over TLS only; stunnel terminates TLS in front of
#            Garage), dbbackup over http and, like pgBackRest, over https
#   keepup:  archive lag after pgbench at full speed for BENCH_KEEPUP_SECS
#            (60) s: dbbackup sync and --async --jobs 4, pgBackRest
#            archive-async process-max=4; local and S3
#   drain:   time to archive a backlog of BENCH_BACKLOG (200) ready
#            segments once archive_command works again; same tools; the
#            peak RSS of dbbackup's async worker
#   replay:  recovery through BENCH_REPLAY_SEGS (BENCH_BACKLOG) segments:
#            every segment already in pg_wal, dbbackup wal fetch with and
#            without --prefetch, pgBackRest archive-get sync and async;
#            local and S3 (without --prefetch in `wal fetch --help`,
#            its rows say "not measured")
#   monitor: `dbbackup monitor` checking back to back (--interval 0.01)
#            on the bench cluster and its repository: the time a scrape
#            of /metrics takes (1000 scrapes over one connection, as
#            Prometheus keeps it), and the monitor's RSS over
#            BENCH_MONITOR_CHECKS (10000) checks
#   search:  `dbbackup wal search` from a base backup's start through
#            BENCH_SEARCH_SEGS (100) segments of pgbench WAL ending in a
#            DROP TABLE (zstd and --compress none repositories) against
#            pg_waldump (with and without --quiet) on the same segments
#            decompressed: time, CPU, peak RSS
#
# Parts: BENCH_ONLY=wal,backup,incr,replay,keepup,drain,monitor,search runs only those
# (for development; "wal" is archive, fetch, size and memory, "backup" the
# base backups and restores, "incr" the incremental ones); BENCH_SCALE
# (100, about 1.5 GB; 180 is about 2.7 GB) sizes the cluster of "backup"
# and "incr". A partial run writes its page to
# target/bench/benchmarks.md, not docs/. BENCH_DBBACKUP=PATH benchmarks
# that binary instead of building one.
#
# Not a test: it never fails on slowness (it does stop when a command
# fails). Results: target/bench/results.json and docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/lib.sh
GARAGE=${DBBACKUP_GARAGE_BIN:-$DBBACKUP_CACHE/garage/bin/garage}
if [ ! -x "$GARAGE" ]; then
  echo "bench: Garage (the S3 store) is not at $GARAGE: install it with" \
    "\`cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite" \
    "--root $DBBACKUP_CACHE/garage\`, or point DBBACKUP_GARAGE_BIN at it" >&2
  exit 1
fi
PARTS=(wal backup incr replay keepup drain monitor search)
BENCH_ONLY=${BENCH_ONLY:-}
for p in ${BENCH_ONLY//,/ }; do
  [[ " ${PARTS[*]} " == *" $p "* ]] || { echo "bench: BENCH_ONLY: no part \"$p\" (parts: ${PARTS[*]})" >&2; exit 1; }
done
want() { [ -z "$BENCH_ONLY" ] || [[ ",$BENCH_ONLY," == *",$1,"* ]]; }
if [ -n "${BENCH_DBBACKUP:-}" ]; then
  [ -x "$BENCH_DBBACKUP" ] || { echo "bench: BENCH_DBBACKUP=$BENCH_DBBACKUP is not an executable" >&2; exit 1; }
else
  cargo build --release -q -p dbbackup
fi

RUNS=${BENCH_RUNS:-15}
SEGMENTS=${BENCH_SEGMENTS:-8}
PGBIN=${DBBACKUP_PG15_BIN:-/usr/lib/postgresql/15/bin}
WORK=$(mktemp -d /tmp/dbbackup-bench.XXXXXX)
chmod 755 "$WORK"
RUN=()
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; RUN=(runuser -u postgres --); fi
as() { "${RUN[@]}" "$@"; }
# Files the tools (run as postgres) must own: their secrets' config files.
give() { if [ "$(id -u)" = 0 ]; then chown postgres "$@"; fi; }
cp "${BENCH_DBBACKUP:-target/release/dbbackup}" "$WORK/dbbackup"; chmod 755 "$WORK/dbbackup"
DBB="$WORK/dbbackup"
PORT=$((20000 + RANDOM % 20000))
GARAGE_PID=; STUNNEL_PID=
cleanup() {
  as "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  as "$PGBIN/pg_ctl" -D "$WORK/rp" -m immediate stop >/dev/null 2>&1 || true
  stop_worker "$WORK/spool-local" 2>/dev/null || true; stop_worker "$WORK/spool-s3" 2>/dev/null || true
  local p
  for p in $STUNNEL_PID $GARAGE_PID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
die() { echo "bench: $*" >&2; exit 1; }
# dbbackup's async archive worker of a --spool-dir: its pid, if it runs.
worker_pid() {
  local pid
  pid=$(cat "$1/archive/worker.pid" 2>/dev/null) || return 0
  grep -qa archive-worker "/proc/$pid/cmdline" 2>/dev/null && echo "$pid"
  return 0
}
worker_hwm() { # spool dir: peak RSS (KiB, VmHWM) of its running worker, or nothing
  local pid; pid=$(worker_pid "$1")
  [ -n "$pid" ] && awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null
  return 0
}
stop_worker() { # spool dir: the worker pushes whatever is .ready, even another tool's turn
  local pid; pid=$(worker_pid "$1")
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
# 16 MiB segments (initdb's default): number <-> file name.
segno() { echo $((16#${1:8:8} * 256 + 16#${1:16:8})); }
segname() { printf '%s%08X%08X' "$2" $(($1 / 256)) $(($1 % 256)); } # number timeline

echo "==> cluster and real WAL (pgbench)"
as "$PGBIN/initdb" -D "$WORK/data" -A trust -U postgres --locale=C >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
max_wal_size = 4GB
CONF
as "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
PSQL=(as "$PGBIN/psql" -X -A -t -q -h "$WORK" -p "$PORT" -U postgres -d postgres)
as "$PGBIN/pgbench" -q -i -s 10 -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
as "$PGBIN/pgbench" -n -T 10 -c 2 -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
mkdir -p "$WORK/segs"
CUR=$("${PSQL[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
for f in $(ls "$WORK/data/pg_wal" | grep -E '^[0-9A-F]{24}$' | sort); do
  [[ "$f" < "$CUR" ]] || break
  cp "$WORK/data/pg_wal/$f" "$WORK/segs/"
done
SEGS=($(ls "$WORK/segs" | tail -n "$SEGMENTS"))
chown -R postgres "$WORK/segs" 2>/dev/null || true
echo "    ${#SEGS[@]} segments of 16 MiB"
SEG=${SEGS[$((${#SEGS[@]} / 2))]}

echo "==> Garage (S3) on loopback, stunnel (TLS) in front of it"
free_port() { # a loopback TCP port nothing listens on, not in $TAKEN
  local p
  while :; do
    p=$((20000 + RANDOM % 30000))
    [[ " $TAKEN " == *" $p "* ]] && continue
    (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
    TAKEN+=" $p"; echo "$p"; return
  done
}
TAKEN=" $PORT "
G_RPC=$(free_port); TAKEN+=" $G_RPC"; G_S3=$(free_port); TAKEN+=" $G_S3"; G_ADMIN=$(free_port); TAKEN+=" $G_ADMIN"
TLS_PORT=$(free_port)
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
GD="$WORK/garage"
mkdir -p "$GD"; chmod 700 "$GD"
# Durable like the local repositories, which fsync every file they write:
# Garage acknowledges a PUT only once data and metadata are on disk.
cat >"$GD/garage.toml" <<CONF
metadata_dir = "$GD/meta"
data_dir = "$GD/data"
db_engine = "sqlite"
replication_factor = 1
metadata_fsync = true
data_fsync = true
# Both tools send compressed data: Garage compressing it again would spend
# the shared 2 cores on work a remote store does on its own machines.
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$G_RPC"
rpc_public_addr = "127.0.0.1:$G_RPC"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$G_S3"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$G_ADMIN"
CONF
chmod 600 "$GD/garage.toml"
G=("$GARAGE" -c "$GD/garage.toml")
"${G[@]}" server >"$GD/garage.log" 2>&1 &
GARAGE_PID=$!
for _ in $(seq 1 600); do
  kill -0 "$GARAGE_PID" 2>/dev/null || die "Garage exited at start; its log $GD/garage.log: $(tail -n 20 "$GD/garage.log")"
  listening "$G_S3" && "${G[@]}" status >/dev/null 2>&1 && break
  sleep 0.2
done
"${G[@]}" layout assign -z dc1 -c 10G "$("${G[@]}" node id -q | cut -d@ -f1)" >/dev/null
"${G[@]}" layout apply --version 1 >/dev/null
for _ in $(seq 1 600); do
  "${G[@]}" json-api GetClusterHealth 2>/dev/null | grep -q '"status": *"healthy"' && break
  sleep 0.2
done
KEY_JSON=$("${G[@]}" json-api CreateKey '{"name":"bench"}')
S3_KEY_ID=$(printf '%s' "$KEY_JSON" | sed -n 's/.*"accessKeyId": *"\([^"]*\)".*/\1/p')
S3_SECRET=$(printf '%s' "$KEY_JSON" | sed -n 's/.*"secretAccessKey": *"\([^"]*\)".*/\1/p')
[ -n "$S3_KEY_ID" ] && [ -n "$S3_SECRET" ] || die "garage json-api CreateKey answered: $KEY_JSON"
BUCKET=bench
"${G[@]}" bucket create "$BUCKET" >/dev/null
"${G[@]}" bucket allow --read --write --owner "$BUCKET" --key "$S3_KEY_ID" >/dev/null
S3_URL="http://127.0.0.1:$G_S3"
# Deleting objects between timed archives (as the local rows rm the file).
printf 'user = "%s:%s"\n' "$S3_KEY_ID" "$S3_SECRET" >"$GD/curlrc"; chmod 600 "$GD/curlrc"
S3CURL=(curl -sS --fail -K "$GD/curlrc" --aws-sigv4 "aws:amz:garage:s3" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD")
s3_keys() { "${S3CURL[@]}" "$S3_URL/$BUCKET?list-type=2&prefix=${1//\//%2F}" | grep -o '<Key>[^<]*</Key>' | sed 's#</\{0,1\}Key>##g'; }
s3_rm() { "${S3CURL[@]}" -X DELETE "$S3_URL/$BUCKET/$1" >/dev/null; }

# TLS: a CA, and a certificate for 127.0.0.1 signed by it. pgBackRest 2.45
# matches the host against DNS names only, rustls against IP addresses
# only: the certificate names 127.0.0.1 both ways.
TLS="$WORK/tls"
mkdir -p "$TLS"; chmod 755 "$TLS"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=dbbackup-bench-ca \
  -keyout "$TLS/ca.key" -out "$TLS/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout "$TLS/tls.key" -out "$TLS/tls.csr" 2>/dev/null
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:127.0.0.1" "basicConstraints=CA:FALSE" \
  "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$TLS/ext.cnf"
openssl x509 -req -in "$TLS/tls.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial -days 2 \
  -extfile "$TLS/ext.cnf" -out "$TLS/tls.crt" 2>/dev/null
chmod 600 "$TLS/ca.key" "$TLS/tls.key"; chmod 644 "$TLS/ca.crt"
CA="$TLS/ca.crt"
cat >"$TLS/stunnel.conf" <<CONF
foreground = yes
pid =
debug = warning
[s3]
accept = 127.0.0.1:$TLS_PORT
connect = 127.0.0.1:$G_S3
cert = $TLS/tls.crt
key = $TLS/tls.key
CONF
stunnel "$TLS/stunnel.conf" >"$TLS/stunnel.log" 2>&1 &
STUNNEL_PID=$!
for _ in $(seq 1 100); do
  kill -0 "$STUNNEL_PID" 2>/dev/null || die "stunnel exited at start: $(tail -n 20 "$TLS/stunnel.log")"
  listening "$TLS_PORT" && break
  sleep 0.1
done
GARAGE_VERSION=$("$GARAGE" --version | awk '{print $2}' | sed 's/^cargo://')
echo "    Garage $GARAGE_VERSION at $S3_URL, https at 127.0.0.1:$TLS_PORT, bucket $BUCKET"

echo "==> pgBackRest stanzas (local, S3)"
cat >"$WORK/pgbackrest.conf" <<CONF
[global]
repo1-path=$WORK/pgbr
compress-type=lz4
log-level-console=error
log-level-file=off
lock-path=$WORK/pgbr-lock
spool-path=$WORK/pgbr-spool
start-fast=y
[bench]
pg1-path=$WORK/data
pg1-socket-path=$WORK
pg1-port=$PORT
CONF
chmod 644 "$WORK/pgbackrest.conf"
PGBR=(pgbackrest --config="$WORK/pgbackrest.conf" --stanza=bench)
as "${PGBR[@]}" stanza-create >/dev/null
# The same stanza in the bucket; the certificate is verified against the CA.
cat >"$WORK/pgbackrest-s3.conf" <<CONF
[global]
repo1-type=s3
repo1-path=/pgbr
repo1-s3-bucket=$BUCKET
repo1-s3-endpoint=127.0.0.1
repo1-storage-port=$TLS_PORT
repo1-s3-uri-style=path
repo1-s3-region=garage
repo1-s3-key=$S3_KEY_ID
repo1-s3-key-secret=$S3_SECRET
repo1-storage-ca-file=$CA
compress-type=lz4
log-level-console=error
log-level-file=off
lock-path=$WORK/pgbr-s3-lock
spool-path=$WORK/pgbr-s3-spool
start-fast=y
[bench]
pg1-path=$WORK/data
pg1-socket-path=$WORK
pg1-port=$PORT
CONF
give "$WORK/pgbackrest-s3.conf"; chmod 600 "$WORK/pgbackrest-s3.conf"
PGBR_S3=(pgbackrest --config="$WORK/pgbackrest-s3.conf" --stanza=bench)
as "${PGBR_S3[@]}" stanza-create >/dev/null
# The same stanzas, asynchronous: archive-push and archive-get through a
# spool of their own, 4 processes (archive-get-queue-max at its default,
# 128 MiB: 8 segments, as dbbackup's default --prefetch 8).
for c in pgbackrest pgbackrest-s3; do
  sed -e "s#^spool-path=.*#spool-path=$WORK/$c-async-spool\narchive-async=y\nprocess-max=4#" "$WORK/$c.conf" >"$WORK/$c-async.conf"
  give "$WORK/$c-async.conf"; chmod 600 "$WORK/$c-async.conf"
done

echo "==> dbbackup repositories (local, S3)"
as "$DBB" repo init --repo "$WORK/repo-zstd" --pgdata "$WORK/data" >/dev/null
as "$DBB" repo init --repo "$WORK/repo-lz4" --pgdata "$WORK/data" --compress lz4 >/dev/null
as "$DBB" key generate --output "$WORK/key" 2>/dev/null
as "$DBB" repo init --repo "$WORK/repo-enc" --pgdata "$WORK/data" --encrypt --encryption-key-file "$WORK/key" >/dev/null
# One repository in the bucket, reached two ways: plain http to Garage,
# and https through stunnel (the CA given by ca-file in [s3]).
s3_config() { # file endpoint [extra [s3] line]
  cat >"$1" <<CONF
repo = "s3://$BUCKET/dbbackup"
[s3]
endpoint = "$2"
region = "garage"
path-style = true
access-key-id = "$S3_KEY_ID"
secret-access-key = "$S3_SECRET"
${3:-}
CONF
  give "$1"; chmod 600 "$1"
}
S3_CONF="$WORK/s3.toml"; S3_TLS_CONF="$WORK/s3-tls.toml"
s3_config "$S3_CONF" "$S3_URL"
s3_config "$S3_TLS_CONF" "https://127.0.0.1:$TLS_PORT" "ca-file = \"$CA\""
as "$DBB" repo init --config "$S3_CONF" --pgdata "$WORK/data" >/dev/null
# wal archive --async: one spool per repository (a spool belongs to one).
for d in spool-local spool-s3; do mkdir -p "$WORK/$d"; give "$WORK/$d"; chmod 700 "$WORK/$d"; done
DBB_TLS=("$DBB")

median() { # command...; prints median seconds over RUNS runs, preparing each with $PREP
  local times=()
  for _ in $(seq 1 "$RUNS"); do
    eval "$PREP"
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null 2>"$WORK/cmd.err" || die "failed: $* : $(tail -n 5 "$WORK/cmd.err")"; t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.6f\n", a[int((NR+1)/2)]}'
}
rss() { # peak RSS in KiB of one run (of the tool itself, not runuser)
  eval "$PREP"
  "${RUN[@]}" /usr/bin/time -f '%M' "$@" 2>&1 >/dev/null | tail -n1
}

if want wal; then
echo "==> repository size for ${#SEGS[@]} segments"
for s in "${SEGS[@]}"; do
  as "${PGBR[@]}" archive-push "$WORK/segs/$s"
  as "$DBB" wal archive "$WORK/segs/$s" --repo "$WORK/repo-zstd"
  as "$DBB" wal archive "$WORK/segs/$s" --repo "$WORK/repo-lz4"
  as "$DBB" wal archive "$WORK/segs/$s" --repo "$WORK/repo-enc" --encryption-key-file "$WORK/key"
  as "${PGBR_S3[@]}" archive-push "$WORK/segs/$s"
  as "$DBB" wal archive "$WORK/segs/$s" --config "$S3_CONF"
done
size() { find "$1" -type f \( -name '0000*' \) -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
SZ_PGBR=$(size "$WORK/pgbr/archive")
SZ_ZSTD=$(size "$WORK/repo-zstd/wal"); SZ_LZ4=$(size "$WORK/repo-lz4/wal"); SZ_ENC=$(size "$WORK/repo-enc/wal")


echo "==> archive latency (median of $RUNS), segment $SEG"
PGBR_DIR=$(dirname "$(find "$WORK/pgbr/archive" -name "$SEG-*")")
PREP="rm -f $PGBR_DIR/$SEG-*"
A_PGBR=$(median as "${PGBR[@]}" archive-push "$WORK/segs/$SEG"); M_A_PGBR=$(rss "${PGBR[@]}" archive-push "$WORK/segs/$SEG")
declare -A A M_A
for v in zstd lz4 enc; do
  PREP="rm -f $WORK/repo-$v/wal/*/$SEG.*"
  extra=(); [ $v = enc ] && extra=(--encryption-key-file "$WORK/key")
  A[$v]=$(median as "$DBB" wal archive "$WORK/segs/$SEG" --repo "$WORK/repo-$v" "${extra[@]}")
  M_A[$v]=$(rss "$DBB" wal archive "$WORK/segs/$SEG" --repo "$WORK/repo-$v" "${extra[@]}")
done
# On S3 each run starts with the segment's object deleted, as above.
K=$(s3_keys "pgbr/archive/bench/" | grep "/$SEG-") || die "no pgBackRest object for $SEG in the bucket"
PREP="s3_rm $K"
A_PGBR_S3=$(median as "${PGBR_S3[@]}" archive-push "$WORK/segs/$SEG"); M_A_PGBR_S3=$(rss "${PGBR_S3[@]}" archive-push "$WORK/segs/$SEG")
K=$(s3_keys "dbbackup/wal/" | grep "/$SEG\.") || die "no dbbackup object for $SEG in the bucket"
PREP="s3_rm $K"
A_S3=$(median as "$DBB" wal archive "$WORK/segs/$SEG" --config "$S3_CONF"); M_A_S3=$(rss "$DBB" wal archive "$WORK/segs/$SEG" --config "$S3_CONF")
A_TLS=$(median as "${DBB_TLS[@]}" wal archive "$WORK/segs/$SEG" --config "$S3_TLS_CONF"); M_A_TLS=$(rss "${DBB_TLS[@]}" wal archive "$WORK/segs/$SEG" --config "$S3_TLS_CONF")
s3_keys "dbbackup/wal/" | grep -q "/$SEG\." || die "the S3 archive of $SEG left no object"

echo "==> fetch latency (median of $RUNS)"
PREP="rm -f $WORK/out"
F_PGBR=$(median as "${PGBR[@]}" archive-get "$SEG" "$WORK/out"); M_F_PGBR=$(rss "${PGBR[@]}" archive-get "$SEG" "$WORK/out")
declare -A F M_F
for v in zstd lz4 enc; do
  extra=(); [ $v = enc ] && extra=(--encryption-key-file "$WORK/key")
  F[$v]=$(median as "$DBB" wal fetch "$SEG" "$WORK/out" --repo "$WORK/repo-$v" "${extra[@]}")
  M_F[$v]=$(rss "$DBB" wal fetch "$SEG" "$WORK/out" --repo "$WORK/repo-$v" "${extra[@]}")
done
F_PGBR_S3=$(median as "${PGBR_S3[@]}" archive-get "$SEG" "$WORK/out"); M_F_PGBR_S3=$(rss "${PGBR_S3[@]}" archive-get "$SEG" "$WORK/out")
F_S3=$(median as "$DBB" wal fetch "$SEG" "$WORK/out" --config "$S3_CONF"); M_F_S3=$(rss "$DBB" wal fetch "$SEG" "$WORK/out" --config "$S3_CONF")
F_TLS=$(median as "${DBB_TLS[@]}" wal fetch "$SEG" "$WORK/out" --config "$S3_TLS_CONF"); M_F_TLS=$(rss "${DBB_TLS[@]}" wal fetch "$SEG" "$WORK/out" --config "$S3_TLS_CONF")
cmp -s "$WORK/out" "$WORK/segs/$SEG" || die "the segment fetched from S3 differs from $SEG"
fi # wal

# Each tool needs archiving into its repository for its backups to
# complete; while a tool's backup runs, archive_command archives into that
# repository only, so no backup waits for another tool's archiving.
declare -A ARCH
ARCH[pgbr]="pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench archive-push %p"
ARCH[dbb]="$DBB wal archive %p %f --repo $WORK/repo-zstd"
ARCH[pgbr_s3]="pgbackrest --config=$WORK/pgbackrest-s3.conf --stanza=bench archive-push %p"
ARCH[dbb_s3]="$DBB wal archive %p %f --config $S3_CONF"
ARCH[dbb_tls]=${ARCH[dbb_s3]} # the same repository; its WAL goes over http
ARCH[local]="${ARCH[dbb]} && ${ARCH[pgbr]}"
# Asynchronous: dbbackup --async --jobs 4, pgBackRest archive-async with process-max=4.
ARCH[dbb_async]="$DBB wal archive %p %f --repo $WORK/repo-zstd --async --jobs 4 --spool-dir $WORK/spool-local"
ARCH[dbb_s3_async]="$DBB wal archive %p %f --config $S3_CONF --async --jobs 4 --spool-dir $WORK/spool-s3"
ARCH[pgbr_async]="pgbackrest --config=$WORK/pgbackrest-async.conf --stanza=bench archive-push %p"
ARCH[pgbr_s3_async]="pgbackrest --config=$WORK/pgbackrest-s3-async.conf --stanza=bench archive-push %p"
ARCH[none]="" # archive_mode on, nothing archived: segments wait as .ready
ARCHIVING=; ARCH_NOW=
archiving_on() { # archive_mode on (a restart), into the local repositories
  [ -n "$ARCHIVING" ] && return 0
  "${PSQL[@]}" -c "ALTER SYSTEM SET archive_mode = on" -c "ALTER SYSTEM SET archive_command = '${ARCH[local]}'"
  ARCHIVING=1; ARCH_NOW=${ARCH[local]}
  as "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w restart >/dev/null
}
set_archive() { # tool: archive_command archives into its repository only, from now
  "${PSQL[@]}" -c "ALTER SYSTEM SET archive_command = '${ARCH[$1]}'" -c "SELECT pg_reload_conf()" >/dev/null
  ARCH_NOW=${ARCH[$1]}
}
archive_into() { # tool: set_archive, once WAL already waiting went where it was meant to
  local cmd=${ARCH[$1]}
  [ "$cmd" = "$ARCH_NOW" ] && return 0
  for _ in $(seq 1 1200); do
    compgen -G "$WORK/data/pg_wal/archive_status/*.ready" >/dev/null || break
    sleep 0.1
  done
  set_archive "$1"
  sleep 1 # the archiver rereads its configuration on SIGHUP
}
cur_seg() { "${PSQL[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())"; }
ready_count() { find "$WORK/data/pg_wal/archive_status" -name '*.ready' | wc -l; }
drain_wait() { # until no segment waits to be archived (at most 30 min)
  for _ in $(seq 1 18000); do
    [ "$(ready_count)" = 0 ] && return 0
    sleep 0.1
  done
  die "archiving is stuck: $(ready_count) segments still .ready after 30 min with archive_command '$ARCH_NOW'; server log: $(tail -n 5 "$WORK/server.log")"
}
archiver_stats() { "${PSQL[@]}" -F ' ' -c "SELECT archived_count, failed_count, coalesce(last_archived_wal, '-') FROM pg_stat_archiver"; }
elapsed() { printf '%.6f' "$(echo "$(date +%s.%N) - $1" | bc -l)"; } # seconds since t0
timed() { # sets T (seconds) and MEM (peak KiB) of one run, its stdout in $WORK/cmd.out; stops the bench if it fails
  local t0 t1 rssf
  rssf=$(mktemp); chmod 666 "$rssf"
  sync # the previous run's dirty pages are not this run's cost
  t0=$(date +%s.%N)
  "${RUN[@]}" /usr/bin/time -o "$rssf" -f '%M' "$@" >"$WORK/cmd.out" 2>"$WORK/cmd.err" ||
    die "failed: $* : $(grep -v 'Command exited' "$WORK/cmd.err" | tail -n 5)"
  t1=$(date +%s.%N)
  T=$(printf '%.6f' "$(echo "$t1 - $t0" | bc -l)"); MEM=$(tail -n1 "$rssf"); rm -f "$rssf"
}
med3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
max3() { printf '%s\n' "$@" | sort -g | tail -n1; }
fresh_dir() { rm -rf "$1"; mkdir -p "$1"; chown postgres "$1" 2>/dev/null || true; chmod 700 "$1"; }
settle() { sync; if [ "$(id -u)" = 0 ]; then echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true; fi; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }
ms() { echo "scale=1; $1 * 1000 / 1" | bc -l; }
s2() { printf '%.2f' "$1"; }
goal() { # value limit: "met" or "missed"
  if [ "$(echo "$1 <= $2" | bc -l)" = 1 ]; then echo met; else echo missed; fi
}

# The cluster of the base and incremental backups: pgbench at BENCH_SCALE.
if want backup || want incr; then
echo "==> pgbench cluster for the base backups (scale ${BENCH_SCALE:=100})"
as "$PGBIN/pgbench" -q -i -s "$BENCH_SCALE" -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
DBSIZE=$("${PSQL[@]}" -c "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
echo "    cluster size $DBSIZE"
archiving_on
fi
backup_cmd() { # tool [type: full (default), incr]: sets CMD
  local conn=(--host "$WORK" --port "$PORT" --user postgres) type=${2:-full}
  # dbbackup's --type explicitly: without it, a backup after a complete one is incremental.
  case $1 in
    pgbr) CMD=("${PGBR[@]}" --type="$type" --process-max=2 --start-fast backup) ;;
    pgbr_s3) CMD=("${PGBR_S3[@]}" --type="$type" --process-max=2 --start-fast backup) ;;
    dbb) CMD=("$DBB" backup base --type "$type" --fast --jobs 2 --repo "$WORK/repo-zstd" "${conn[@]}") ;;
    dbb_s3) CMD=("$DBB" backup base --type "$type" --fast --jobs 2 --config "$S3_CONF" "${conn[@]}") ;;
    dbb_tls) CMD=("${DBB_TLS[@]}" backup base --type "$type" --fast --jobs 2 --config "$S3_TLS_CONF" "${conn[@]}") ;;
  esac
}
restore_cmd() { # tool dir [dbbackup backup ID, default latest]: sets CMD
  local opts=(--base-backup "${3:-latest}" --target-immediate --jobs 2 --target-dir "$2" --force)
  case $1 in
    pgbr) CMD=("${PGBR[@]}" --process-max=2 --pg1-path="$2" --type=immediate restore) ;;
    pgbr_s3) CMD=("${PGBR_S3[@]}" --process-max=2 --pg1-path="$2" --type=immediate restore) ;;
    dbb) CMD=("$DBB" restore pitr --repo "$WORK/repo-zstd" "${opts[@]}") ;;
    dbb_s3) CMD=("$DBB" restore pitr --config "$S3_CONF" "${opts[@]}") ;;
    dbb_tls) CMD=("${DBB_TLS[@]}" restore pitr --config "$S3_TLS_CONF" "${opts[@]}") ;;
  esac
}

if want backup; then
echo "==> base backup and restore of the pgbench cluster (scale $BENCH_SCALE), 2 jobs each"
# Three rounds, the tools taking turns (round 2 in reverse order), medians:
# one slow moment of a shared machine does not decide a ratio. Each
# restore starts from the same state: the previous restored copy removed
# (its page cache freed), dirty pages synced, and (as root) the page cache
# dropped.
TOOLS=(pgbr dbb pgbr_s3 dbb_s3 dbb_tls)
declare -A BT BR BMS RMS
for round in 1 2 3; do
  order=("${TOOLS[@]}")
  [ "$round" = 2 ] && order=(dbb_tls dbb_s3 pgbr_s3 dbb pgbr)
  for t in "${order[@]}"; do
    archive_into "$t"
    settle
    backup_cmd "$t"; timed "${CMD[@]}"
    BT[$t]+=" $T"; BMS[$t]+=" $MEM"
  done
  if [ "$round" = 1 ]; then
    BS_PGBR=$(du -sb "$WORK/pgbr/backup" | cut -f1)
    BS_DBB=$(du -sb "$WORK/repo-zstd/backups" | cut -f1)
  fi
  for t in "${order[@]}"; do
    fresh_dir "$WORK/r"; settle
    restore_cmd "$t" "$WORK/r"; timed "${CMD[@]}"
    BR[$t]+=" $T"; RMS[$t]+=" $MEM"
  done
  echo "    round $round done"
done
rm -rf "$WORK/r"
archive_into local
declare -A B R BM RM
for t in "${TOOLS[@]}"; do
  # shellcheck disable=SC2086 # the lists are space-separated numbers
  B[$t]=$(med3 ${BT[$t]}); R[$t]=$(med3 ${BR[$t]}); BM[$t]=$(max3 ${BMS[$t]}); RM[$t]=$(max3 ${RMS[$t]})
done
B_PGBR=${B[pgbr]}; B_DBB=${B[dbb]}; R_PGBR=${R[pgbr]}; R_DBB=${R[dbb]}
BM_PGBR=${BM[pgbr]}; BM_DBB=${BM[dbb]}; RM_PGBR=${RM[pgbr]}; RM_DBB=${RM[dbb]}
fi # backup

if want incr; then
INCR_WHERE=${BENCH_INCR_WHERE:-aid % 100 = 0}
echo "==> incremental backups of the pgbench cluster (scale $BENCH_SCALE), 3 rounds of UPDATE pgbench_accounts ... WHERE $INCR_WHERE, 2 jobs"
archiving_on
# Per-block hashes of relations' files (every fork and 1 GB segment), and
# how many blocks differ between two such snapshots: the bytes an
# incremental backup has to store, measured on the files themselves.
cat >"$WORK/blockhash.py" <<'PY'
import hashlib, os, pickle, re, sys
BLOCK = 8192
if sys.argv[1] == "snap":  # snap OUT PGDATA RELPATH...
    out, root, snap = sys.argv[2], sys.argv[3], {}
    for rel in sys.argv[4:]:
        d, base = os.path.split(rel)
        forks = re.compile(re.escape(base) + r"(_[a-z]+)?(\.[0-9]+)?")
        for name in os.listdir(os.path.join(root, d)):
            if not forks.fullmatch(name):
                continue
            hashes = []
            with open(os.path.join(root, d, name), "rb") as f:
                while chunk := f.read(BLOCK * 128):
                    for i in range(0, len(chunk), BLOCK):
                        hashes.append(hashlib.blake2b(chunk[i:i + BLOCK], digest_size=16).digest())
            snap[os.path.join(d, name)] = hashes
    with open(out, "wb") as f:
        pickle.dump(snap, f)
else:  # diff BEFORE AFTER: "changed_blocks blocks_after" (new blocks count as changed)
    with open(sys.argv[2], "rb") as f:
        before = pickle.load(f)
    with open(sys.argv[3], "rb") as f:
        after = pickle.load(f)
    changed = total = 0
    for name, hashes in after.items():
        old = before.get(name, [])
        total += len(hashes)
        changed += sum(1 for i, h in enumerate(hashes) if i >= len(old) or old[i] != h)
    print(changed, total)
PY
# pgbench_accounts, its TOAST table and every index of either.
RELPATHS=$("${PSQL[@]}" -c "SELECT pg_relation_filepath(c.oid) FROM pg_class c
  WHERE c.oid = 'pgbench_accounts'::regclass
     OR c.oid = (SELECT reltoastrelid FROM pg_class WHERE oid = 'pgbench_accounts'::regclass)
     OR c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN ('pgbench_accounts'::regclass,
                  (SELECT reltoastrelid FROM pg_class WHERE oid = 'pgbench_accounts'::regclass)))")
block_snap() { # out: per-block hashes of RELPATHS now
  # shellcheck disable=SC2086 # one relation path a word
  python3 "$WORK/blockhash.py" snap "$1" "$WORK/data" $RELPATHS || die "hashing the blocks of pgbench_accounts failed"
}
dbb_info() { # backup ID: "type parent stored_bytes chain_length"
  as "$DBB" backup show "$1" --json --repo "$WORK/repo-zstd" |
    jq -r '"\(.type) \(.parent // "-") \(.stored_bytes) \(.chain | length)"'
}
pgbr_newest() { # "type repository_delta_bytes" of pgBackRest's newest backup
  as "${PGBR[@]}" --output=json info | jq -r '.[0].backup[-1] | "\(.type) \(.info.repository.delta)"'
}
declare -A IN_ROWS IN_S IN_M IN_ID IN_ST IN_CH IN_BL IN_PS IN_PD
# 1. The fulls the chains grow from: the backup part's, if it ran (the
# last backup in each repository is then a full of this data), else one
# of each tool now.
if want backup; then
  IN_FULL_S=$B_DBB; IN_FULL_M=$BM_DBB; IN_FULL_FROM="the backup part's dbbackup full (median of 3)"
  IN_PFULL_S=$B_PGBR
else
  # A CHECKPOINT first, as before each incr (after its UPDATE): the
  # backup's own checkpoint does not flush pgbench's load into its time.
  drain_wait; archive_into dbb; "${PSQL[@]}" -c CHECKPOINT; settle
  backup_cmd dbb full; timed "${CMD[@]}"
  IN_FULL_S=$T; IN_FULL_M=$MEM; IN_FULL_FROM="one dbbackup --type full"
  archive_into pgbr; "${PSQL[@]}" -c CHECKPOINT; settle
  backup_cmd pgbr full; timed "${CMD[@]}"
  IN_PFULL_S=$T
fi
read -r ty _ _ _ <<<"$(dbb_info latest)"
[ "$ty" = full ] || die "the newest dbbackup backup is a $ty backup, not the full the chain should start from"
read -r ty _ <<<"$(pgbr_newest)"
[ "$ty" = full ] || die "pgBackRest's newest backup is a $ty backup, not a full"
# The floor of a backup that reads every file, as an incr does: every
# file of the data directory read cold, two readers at once (cat).
"${PSQL[@]}" -c CHECKPOINT; settle
t0=$(date +%s.%N)
find "$WORK/data" -type f -print0 | xargs -0 -P 2 -n 64 cat >/dev/null
IN_READ_S=$(elapsed "$t0")
echo "    full: dbbackup $(s2 "$IN_FULL_S") s ($IN_FULL_FROM), pgBackRest $(s2 "$IN_PFULL_S") s; reading every file cold: $(s2 "$IN_READ_S") s"
for i in 1 2 3; do
  # 2. ~1 % of the rows updated; the blocks that changed, counted.
  drain_wait; archive_into local
  "${PSQL[@]}" -c CHECKPOINT
  block_snap "$WORK/blocks-before"
  IN_ROWS[$i]=$("${PSQL[@]}" -c "WITH u AS (UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE $INCR_WHERE RETURNING 1) SELECT count(*) FROM u")
  "${PSQL[@]}" -c CHECKPOINT
  block_snap "$WORK/blocks-after"
  read -r IN_CH[$i] IN_BL[$i] <<<"$(python3 "$WORK/blockhash.py" diff "$WORK/blocks-before" "$WORK/blocks-after")"
  # 3. dbbackup --type incr: time, peak RSS, stored bytes.
  drain_wait; archive_into dbb; settle
  backup_cmd dbb incr; timed "${CMD[@]}"
  IN_S[$i]=$T; IN_M[$i]=$MEM; IN_ID[$i]=$(tail -n1 "$WORK/cmd.out")
  read -r ty parent st chain <<<"$(dbb_info "${IN_ID[$i]}")"
  if [ "$ty" != incr ] || [ "$chain" != $((i + 1)) ]; then
    die "backup base --type incr made backup ${IN_ID[$i]} of type $ty (parent $parent) in a chain of $chain backups; expected an incr, chain of $((i + 1))"
  fi
  IN_ST[$i]=$st
  # 4. pgBackRest --type=incr (file level) of the same change.
  archive_into pgbr; settle
  backup_cmd pgbr incr; timed "${CMD[@]}"
  IN_PS[$i]=$T
  read -r ty IN_PD[$i] <<<"$(pgbr_newest)"
  [ "$ty" = incr ] || die "pgbackrest --type=incr made a $ty backup"
  echo "    round $i: ${IN_ROWS[$i]} rows updated, $((IN_CH[$i] * 8192)) bytes changed (${IN_CH[$i]} of ${IN_BL[$i]} blocks); dbbackup incr $(s2 "${IN_S[$i]}") s, ${IN_M[$i]} KiB, ${IN_ST[$i]} bytes stored; pgBackRest incr $(s2 "${IN_PS[$i]}") s, ${IN_PD[$i]} bytes"
done
# 5. A full of the same data, then the restore of the full + 3 incr
# chain against the restore of that full: 3 rounds, taking turns, medians.
drain_wait; archive_into dbb; "${PSQL[@]}" -c CHECKPOINT; settle
backup_cmd dbb full; timed "${CMD[@]}"
IN_FULL2_S=$T; IN_FULL2_ID=$(tail -n1 "$WORK/cmd.out")
read -r ty _ IN_FULL2_ST _ <<<"$(dbb_info "$IN_FULL2_ID")"
[ "$ty" = full ] || die "backup base --type full made backup $IN_FULL2_ID of type $ty"
IN_RC=; IN_RF=; IN_RCM=; IN_RFM=
for round in 1 2 3; do
  order=(chain full); [ "$round" = 2 ] && order=(full chain)
  for k in "${order[@]}"; do
    id=${IN_ID[3]}; [ "$k" = full ] && id=$IN_FULL2_ID
    fresh_dir "$WORK/r"; settle
    restore_cmd dbb "$WORK/r" "$id"; timed "${CMD[@]}"
    if [ "$k" = chain ]; then IN_RC+=" $T"; IN_RCM+=" $MEM"; else IN_RF+=" $T"; IN_RFM+=" $MEM"; fi
  done
done
# The last chain restore (round 3 ends with it) holds pgbench_accounts as
# the third UPDATE left it (nothing wrote it since): compare its blocks.
# shellcheck disable=SC2086 # one relation path a word
python3 "$WORK/blockhash.py" snap "$WORK/blocks-restored" "$WORK/r" $RELPATHS || die "hashing the restored blocks failed"
read -r IN_RDIFF _ <<<"$(python3 "$WORK/blockhash.py" diff "$WORK/blocks-after" "$WORK/blocks-restored")"
rm -rf "$WORK/r" "$WORK/blocks-before" "$WORK/blocks-after" "$WORK/blocks-restored"
archive_into local
# shellcheck disable=SC2086 # the lists are space-separated numbers
{ IN_R_CHAIN=$(med3 $IN_RC); IN_R_FULL=$(med3 $IN_RF); IN_RM_CHAIN=$(max3 $IN_RCM); IN_RM_FULL=$(max3 $IN_RFM); }
echo "    full after the 3rd incr: $(s2 "$IN_FULL2_S") s; restore of the chain $(s2 "$IN_R_CHAIN") s, of the full $(s2 "$IN_R_FULL") s;" \
  "$IN_RDIFF blocks of the restored pgbench_accounts differ from the primary's"
fi # incr

# The peak RSS of dbbackup's async worker (--jobs 4), sampled (VmHWM) at
# the end of each keepup and drain run, before it is stopped; per kind.
WRSS_LOCAL=0; WRSS_S3=0
note_rss() { # tool
  local v
  case $1 in
    dbb_async) v=$(worker_hwm "$WORK/spool-local"); [ "${v:-0}" -gt "$WRSS_LOCAL" ] && WRSS_LOCAL=$v ;;
    dbb_s3_async) v=$(worker_hwm "$WORK/spool-s3"); [ "${v:-0}" -gt "$WRSS_S3" ] && WRSS_S3=$v ;;
  esac
  return 0
}

if want replay; then
REPLAY_WANT=${BENCH_REPLAY_SEGS:-${BENCH_BACKLOG:-200}}
echo "==> WAL replay: recovery through $REPLAY_WANT segments of pgbench WAL, local and S3"
# One backup, then WAL archived into all four repositories; copies of one
# restored data directory replay it, each with another restore_command.
help=$(as "$DBB" wal fetch --help 2>&1 || true)
HAVE_PREFETCH=; [[ $help == *--prefetch* ]] && HAVE_PREFETCH=1
[ -n "$HAVE_PREFETCH" ] || echo "    skipping the dbbackup --prefetch rows: \`dbbackup wal fetch --help\` has no --prefetch (this build has no prefetching fetch)"
ARCH[replay]="${ARCH[dbb]} && ${ARCH[pgbr]} && ${ARCH[dbb_s3]} && ${ARCH[pgbr_s3]}"
archiving_on; drain_wait; archive_into replay
as "$DBB" backup base --fast --jobs 2 --repo "$WORK/repo-zstd" --host "$WORK" --port "$PORT" --user postgres >/dev/null 2>"$WORK/cmd.err" ||
  die "backup base for the replay failed: $(tail -n 5 "$WORK/cmd.err")"
FIRST=$(cur_seg)
while [ $(($(segno "$(cur_seg)") - $(segno "$FIRST"))) -lt "$REPLAY_WANT" ]; do
  as "$PGBIN/pgbench" -n -T 2 -c 2 -j 2 -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
done
LAST=$(cur_seg)
"${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
drain_wait
[ "$("${PSQL[@]}" -c "SELECT last_archived_wal >= '$LAST' FROM pg_stat_archiver")" = t ] || die "$LAST was not archived"
REPLAY_SEGS=$(($(segno "$LAST") - $(segno "$FIRST") + 1))
# Each recovery must end where the primary stopped: the same rows.
REPLAY_ROWS=$("${PSQL[@]}" -c "SELECT count(*) FROM pgbench_history")
as "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
fresh_dir "$WORK/rp0"
as "$DBB" restore pitr --repo "$WORK/repo-zstd" --base-backup latest --jobs 2 --target-dir "$WORK/rp0" --force --archive-mode off >/dev/null 2>"$WORK/cmd.err" ||
  die "restore pitr for the replay failed: $(tail -n 5 "$WORK/cmd.err")"
# The --prefetch row runs what restore pitr wrote by default ("--prefetch
# N --prefetch-timeline T"), with the repository option of each kind.
PF=8; PF_OPTS="--prefetch 8"
if [ -n "$HAVE_PREFETCH" ]; then
  w=$(grep -o -- '--prefetch [0-9]*\( --prefetch-timeline [0-9]*\)\{0,1\}' "$WORK/rp0/postgresql.auto.conf" | tail -n1)
  [ -n "$w" ] || die "restore pitr wrote no --prefetch into restore_command: $(grep restore_command "$WORK/rp0/postgresql.auto.conf")"
  PF_OPTS=$w; PF=$(echo "$w" | awk '{print $2}')
fi
# The in-pg_wal row: every segment recovery reads (from the backup's start
# on), fetched once from the repository, copied into pg_wal beforehand.
START=$(sed -n 's/^START WAL LOCATION: .*(file \([0-9A-F]\{24\}\))$/\1/p' "$WORK/rp0/backup_label" 2>/dev/null)
[ -n "$START" ] || die "no START WAL LOCATION in $WORK/rp0/backup_label"
fresh_dir "$WORK/replay-wal"
n=$(segno "$START")
while :; do
  f=$(segname "$n" "${START:0:8}"); rc=0
  as "$DBB" wal fetch "$f" "$WORK/replay-wal/$f" --repo "$WORK/repo-zstd" >/dev/null 2>"$WORK/cmd.err" || rc=$?
  [ "$rc" = 1 ] && break
  [ "$rc" = 0 ] || die "wal fetch $f failed ($rc): $(tail -n 5 "$WORK/cmd.err")"
  n=$((n + 1))
done
[ "$n" -gt "$(segno "$LAST")" ] || die "the repository ends before $LAST"
replay() { # dir: seconds from start until recovery has ended, checked to have replayed it all
  local dir=$1 p=$((PORT + 1)) t0 t1 st= rows
  t0=$(date +%s.%N)
  as "$PGBIN/pg_ctl" -D "$dir" -l "$dir/replay.log" -o "-p $p -c unix_socket_directories=$WORK" -w -t 600 start >/dev/null ||
    die "recovery in $dir failed: $(tail -n 5 "$dir/replay.log")"
  for _ in $(seq 1 12000); do
    st=$(as "$PGBIN/psql" -X -A -t -q -h "$WORK" -p "$p" -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null || true)
    [ "$st" = f ] && break
    [ -f "$dir/postmaster.pid" ] && kill -0 "$(head -n1 "$dir/postmaster.pid")" 2>/dev/null ||
      die "recovery in $dir stopped: $(tail -n 5 "$dir/replay.log")"
    sleep 0.05
  done
  t1=$(date +%s.%N)
  [ "$st" = f ] || die "recovery in $dir has not ended after 10 minutes: $(tail -n 5 "$dir/replay.log")"
  rows=$(as "$PGBIN/psql" -X -A -t -q -h "$WORK" -p "$p" -U postgres -d postgres -c 'SELECT count(*) FROM pgbench_history')
  as "$PGBIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null
  [ "$rows" = "$REPLAY_ROWS" ] || die "recovery in $dir ended early: $rows rows in pgbench_history, the primary had $REPLAY_ROWS ($(tail -n 3 "$dir/replay.log"))"
  printf '%.6f\n' "$(echo "$t1 - $t0" | bc -l)"
}
declare -A RCMD P
RCMD[pgwal]=false # every segment in pg_wal: restore_command finds nothing
dbb_fetch() { echo "$DBB wal fetch %f %p $1"; }
pgbr_get() { echo "pgbackrest --config=$WORK/$1.conf --stanza=bench --pg1-path=$WORK/rp archive-get %f \"%p\""; }
RCMD[dbb]=$(dbb_fetch "--repo $WORK/repo-zstd${HAVE_PREFETCH:+ --prefetch 0}")
RCMD[dbb_s3]=$(dbb_fetch "--config $S3_CONF${HAVE_PREFETCH:+ --prefetch 0}")
RCMD[dbb_pf]=$(dbb_fetch "--repo $WORK/repo-zstd $PF_OPTS")
RCMD[dbb_s3_pf]=$(dbb_fetch "--config $S3_CONF $PF_OPTS")
RCMD[pgbr]=$(pgbr_get pgbackrest); RCMD[pgbr_async]=$(pgbr_get pgbackrest-async)
RCMD[pgbr_s3]=$(pgbr_get pgbackrest-s3); RCMD[pgbr_s3_async]=$(pgbr_get pgbackrest-s3-async)
REPLAYS=(pgwal dbb_pf pgbr_async dbb pgbr dbb_s3_pf pgbr_s3_async dbb_s3 pgbr_s3)
for r in "${REPLAYS[@]}"; do
  [[ $r == *_pf && -z $HAVE_PREFETCH ]] && continue
  rm -rf "$WORK/rp"
  cp -a "$WORK/rp0" "$WORK/rp"
  [ "$r" = pgwal ] && cp -a "$WORK/replay-wal/." "$WORK/rp/pg_wal/"
  echo "restore_command = '${RCMD[$r]}'" >>"$WORK/rp/postgresql.auto.conf"
  settle; P[$r]=$(replay "$WORK/rp")
  echo "    $r: $(printf '%.2f' "${P[$r]}") s"
done
rm -rf "$WORK/rp" "$WORK/rp0" "$WORK/replay-wal"
as "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
P_PGBR=${P[pgbr]}; P_DBB=${P[dbb]}
fi # replay

if want keepup; then
KEEPUP_SECS=${BENCH_KEEPUP_SECS:-60}
echo "==> keeping up: pgbench at full speed (4 clients, synchronous_commit off) for $KEEPUP_SECS s, archive lag at the end"
archiving_on
KU_TOOLS=(dbb dbb_async pgbr_async dbb_s3 dbb_s3_async pgbr_s3_async)
declare -A KU_LAG KU_READY KU_MIB KU_CATCH KU_FAIL
for t in "${KU_TOOLS[@]}"; do
  drain_wait; archive_into "$t"
  "${PSQL[@]}" -c CHECKPOINT
  read -r _ f0 _ <<<"$(archiver_stats)"
  lsn0=$("${PSQL[@]}" -c "SELECT pg_current_wal_lsn()")
  # synchronous_commit off: commits do not wait for the WAL flush, so the
  # rate is CPU-bound, not bound by this disk's fsync latency.
  as env PGOPTIONS="-c synchronous_commit=off" "$PGBIN/pgbench" -n -T "$KEEPUP_SECS" -c 4 -j 2 -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>"$WORK/cmd.err" ||
    die "pgbench failed: $(tail -n 5 "$WORK/cmd.err")"
  read -r cur last fails mib <<<"$("${PSQL[@]}" -F ' ' -c "SELECT pg_walfile_name(pg_current_wal_lsn()), coalesce(last_archived_wal, '-'), failed_count, round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1048576) FROM pg_stat_archiver")"
  KU_READY[$t]=$(ready_count)
  # Complete segments not yet archived: between the one being written and
  # the last archived (a .backup file's name starts with its segment's).
  lag=$(($(segno "$cur") - 1))
  [ "$last" != - ] && lag=$(($(segno "$cur") - $(segno "${last:0:24}") - 1))
  [ "$lag" -lt 0 ] && lag=0
  KU_LAG[$t]=$lag; KU_MIB[$t]=$mib
  t0=$(date +%s.%N); drain_wait; KU_CATCH[$t]=$(elapsed "$t0")
  read -r _ fails _ <<<"$(archiver_stats)"
  KU_FAIL[$t]=$((fails - f0))
  note_rss "$t"; stop_worker "$WORK/spool-local"; stop_worker "$WORK/spool-s3"
  echo "    $t: lag ${KU_LAG[$t]} segments, ${KU_READY[$t]} .ready, $mib MiB of WAL, caught up $(printf '%.1f' "${KU_CATCH[$t]}") s later, ${KU_FAIL[$t]} failed calls"
done
fi # keepup

if want drain; then
BACKLOG=${BENCH_BACKLOG:-200}
echo "==> draining a backlog of $BACKLOG ready segments"
archiving_on
"${PSQL[@]}" -c "CREATE TABLE IF NOT EXISTS bench_backlog (i int)"
# One row and a switch per segment: each is a whole 16 MiB segment,
# nearly all of it zeros.
SWITCHES=$(for i in $(seq 1 "$BACKLOG"); do echo "INSERT INTO bench_backlog VALUES ($i); SELECT pg_switch_wal();"; done)
DR_TOOLS=(dbb_async pgbr_async dbb dbb_s3_async pgbr_s3_async dbb_s3)
declare -A DR DR_N DR_FAIL
for t in "${DR_TOOLS[@]}"; do
  drain_wait; archive_into none
  "${PSQL[@]}" <<<"$SWITCHES" >/dev/null
  for _ in $(seq 1 100); do [ "$(ready_count)" -ge "$BACKLOG" ] && break; sleep 0.1; done
  n=$(ready_count)
  [ "$n" -ge "$BACKLOG" ] || die "only $n segments are .ready after $BACKLOG switches"
  read -r a0 f0 _ <<<"$(archiver_stats)"
  t0=$(date +%s.%N)
  set_archive "$t"
  for _ in $(seq 1 36000); do
    read -r a f _ <<<"$(archiver_stats)"
    [ "$a" -ge $((a0 + n)) ] && break
    sleep 0.1
  done
  DR[$t]=$(elapsed "$t0")
  [ "$a" -ge $((a0 + n)) ] || die "$t archived $((a - a0)) of $n segments in an hour"
  DR_N[$t]=$n; DR_FAIL[$t]=$((f - f0))
  note_rss "$t"; stop_worker "$WORK/spool-local"; stop_worker "$WORK/spool-s3"
  "${PSQL[@]}" -c CHECKPOINT # recycles the archived backlog: pg_wal stays near max_wal_size
  echo "    $t: $n segments in $(printf '%.2f' "${DR[$t]}") s, ${DR_FAIL[$t]} failed calls"
done
fi # drain

if want monitor; then
MON_CHECKS=${BENCH_MONITOR_CHECKS:-10000}
echo "==> monitor: scrapes while checking back to back, memory over $MON_CHECKS checks"
archiving_on; archive_into local
# A backup for the checks to read (its manifest lists every file).
as "$DBB" backup base --fast --repo "$WORK/repo-zstd" --pgdata "$WORK/data" >/dev/null
MPORT=$(free_port)
as "$DBB" monitor --listen "127.0.0.1:$MPORT" --interval 0.01 --repo "$WORK/repo-zstd" --pgdata "$WORK/data" \
  >"$WORK/monitor.log" 2>&1 &
MON_BG=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$MPORT/status" >/dev/null && break; sleep 0.1; done
MPID=$(pgrep -u postgres -f -- "monitor --listen 127.0.0.1:$MPORT" | head -n1)
[ -n "$MPID" ] || die "the monitor did not start: $(tail -n 5 "$WORK/monitor.log")"
mon_metric() { curl -s "http://127.0.0.1:$MPORT/metrics" | awk -v m="$1" '$1 ~ "^"m"[{ ]" {print $2}'; }
mon_checks() { printf '%.0f' "$(mon_metric dbbackup_checks_total)"; }
mon_kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$MPID/status"; }
for _ in $(seq 1 600); do [ "$(mon_checks)" -ge 100 ] && break; sleep 0.1; done
MON_RSS_100=$(mon_kib VmRSS)
# 1000 scrapes over one connection, while checks run: curl's time per transfer.
for _ in $(seq 1 1000); do printf 'url = "http://127.0.0.1:%s/metrics"\noutput = "/dev/null"\n' "$MPORT"; done >"$WORK/scrapes.curl"
curl -s -K "$WORK/scrapes.curl" -w '%{time_total}\n' | sort -g >"$WORK/scrapes.txt"
SCRAPE_MED=$(sed -n 500p "$WORK/scrapes.txt"); SCRAPE_P99=$(sed -n 990p "$WORK/scrapes.txt"); SCRAPE_MAX=$(tail -n1 "$WORK/scrapes.txt")
MON_BYTES=$(curl -s "http://127.0.0.1:$MPORT/metrics" | wc -c)
t0=$(date +%s.%N); c0=$(mon_checks)
for _ in $(seq 1 36000); do
  n=$(mon_checks); [ "$n" -ge "$MON_CHECKS" ] && break
  kill -0 "$MPID" 2>/dev/null || die "the monitor died: $(tail -n 5 "$WORK/monitor.log")"
  sleep 1
done
[ "$n" -ge "$MON_CHECKS" ] || die "the monitor ran only $n checks in 10 hours"
MON_RATE=$(echo "scale=1; ($n - $c0) / $(elapsed "$t0")" | bc -l)
MON_N=$n; MON_HWM=$(mon_kib VmHWM); MON_RSS_END=$(mon_kib VmRSS)
MON_ERRORS=$(printf '%.0f' "$(mon_metric dbbackup_check_errors_total)"); MON_CHECK_S=$(mon_metric dbbackup_check_duration_seconds)
kill -TERM "$MPID"; wait "$MON_BG" 2>/dev/null || true
echo "    $MON_N checks ($MON_RATE per s, $MON_ERRORS failed); scrape median $SCRAPE_MED s, p99 $SCRAPE_P99 s;" \
  "RSS after 100 checks $MON_RSS_100 KiB, after $MON_N $MON_RSS_END KiB, peak $MON_HWM KiB"
fi # monitor

if want search; then
SEARCH_WANT=${BENCH_SEARCH_SEGS:-100}
echo "==> wal search through $SEARCH_WANT segments of pgbench WAL, against pg_waldump on the same segments decompressed"
# Repositories of their own, the default codec (zstd) and --compress none,
# each with one base backup: wal search starts at its backup's start.
for v in zstd none; do
  extra=(); [ $v = none ] && extra=(--compress none)
  as "$DBB" repo init --repo "$WORK/repo-search-$v" --pgdata "$WORK/data" "${extra[@]}" >/dev/null
done
ARCH[search]="$DBB wal archive %p %f --repo $WORK/repo-search-zstd && $DBB wal archive %p %f --repo $WORK/repo-search-none"
archiving_on; drain_wait; archive_into search
# The accident to find: a small table, there in the backups, dropped after the pgbench WAL.
"${PSQL[@]}" -c "SET client_min_messages = warning" -c "DROP TABLE IF EXISTS bench_search_victim" \
  -c "CREATE TABLE bench_search_victim AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g"
# --compress none's backup first: its search covers the zstd one's range and
# at most a segment or two more (counted below), never less.
declare -A SR_START SR_SEGS SR_RECS SR_MIB SR_S SR_RSS SR_CPU SR_COLD
for v in none zstd; do
  as "$DBB" backup base --type full --fast --repo "$WORK/repo-search-$v" --host "$WORK" --port "$PORT" --user postgres >/dev/null 2>"$WORK/cmd.err" ||
    die "backup base into repo-search-$v failed: $(tail -n 5 "$WORK/cmd.err")"
  SR_START[$v]=$(as "$DBB" backup show latest --json --repo "$WORK/repo-search-$v" | jq -r .start_lsn)
  [[ ${SR_START[$v]} =~ ^[0-9A-F]+/[0-9A-F]+$ ]] || die "backup show latest --json in repo-search-$v gave start_lsn \"${SR_START[$v]}\""
done
S=${SR_START[zstd]}
FIRST=$("${PSQL[@]}" -c "SELECT pg_walfile_name('$S')")
while [ $(($(segno "$(cur_seg)") - $(segno "$FIRST"))) -lt "$SEARCH_WANT" ]; do
  as "$PGBIN/pgbench" -n -T 2 -c 2 -j 2 -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
done
"${PSQL[@]}" -c "DROP TABLE bench_search_victim"
LAST=$(cur_seg)
"${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
drain_wait
[ "$("${PSQL[@]}" -c "SELECT last_archived_wal >= '$LAST' FROM pg_stat_archiver")" = t ] || die "$LAST was not archived"
SEARCH_SEGS=$(($(segno "$LAST") - $(segno "$FIRST") + 1))
# pg_waldump's segments: the same ones, fetched (decompressed, verified) from the zstd repository.
fresh_dir "$WORK/search-wal"
for n in $(seq "$(segno "$FIRST")" "$(segno "$LAST")"); do
  f=$(segname "$n" "${FIRST:0:8}")
  as "$DBB" wal fetch "$f" "$WORK/search-wal/$f" --repo "$WORK/repo-search-zstd" >/dev/null 2>"$WORK/cmd.err" ||
    die "wal fetch $f failed: $(tail -n 5 "$WORK/cmd.err")"
done
n=$(($(segno "$LAST") + 1)); E=$(printf '%X/%X' $((n / 256)) $(((n % 256) << 24))) # the end of LAST
SEARCH_MIB=$(du -sm "$WORK/search-wal" | cut -f1)
for v in zstd none; do SR_MIB[$v]=$(du -sm "$WORK/repo-search-$v/wal" | cut -f1); done
WALDUMP=("$PGBIN/pg_waldump" --path "$WORK/search-wal" --start "$S" --end "$E")
# Checks before timing: pg_waldump reads the range without error; wal search
# finds the DROP TABLE in each repository and reads as many records.
as "${WALDUMP[@]}" --stats >"$WORK/waldump.stats" 2>"$WORK/cmd.err" || die "pg_waldump --stats $S..$E failed: $(tail -n 5 "$WORK/cmd.err")"
WD_RECS=$(awk '$1 == "Total" {print $2}' "$WORK/waldump.stats")
for v in zstd none; do
  as "$DBB" wal search --repo "$WORK/repo-search-$v" >"$WORK/search.out" 2>"$WORK/cmd.err" || die "wal search in repo-search-$v failed: $(tail -n 5 "$WORK/cmd.err")"
  grep -q "dropped table public.bench_search_victim" "$WORK/search.out" ||
    die "wal search in repo-search-$v did not report the DROP TABLE of bench_search_victim; it printed: $(head -n 20 "$WORK/search.out") $(tail -n 3 "$WORK/cmd.err")"
  read -r SR_RECS[$v] SR_SEGS[$v] <<<"$(sed -n 's/.*searched \([0-9]*\) records in \([0-9]*\) segments.*/\1 \2/p' "$WORK/cmd.err" | tail -n1)"
  [ -n "${SR_SEGS[$v]}" ] || die "wal search in repo-search-$v did not say what it searched: $(tail -n 3 "$WORK/cmd.err")"
done
echo "    $SEARCH_SEGS segments ($SEARCH_MIB MiB; zstd repository ${SR_MIB[zstd]} MiB) from $S to $E; pg_waldump counts $WD_RECS records," \
  "wal search ${SR_RECS[zstd]} (zstd, ${SR_SEGS[zstd]} segments) and ${SR_RECS[none]} (none, ${SR_SEGS[none]} segments from ${SR_START[none]})"
# Timed with the page cache warm, as the wal part's medians: every input was
# just written or read above, and each command runs once untimed first.
# Then one run for its CPU time and peak RSS (the rss helper's /usr/bin/time
# of the tool itself, not runuser), and one with the page cache dropped
# (settle), for the cold cost.
PREP=:
declare -A SR_CMD
SR_CMD[waldump]="${WALDUMP[*]}"
SR_CMD[waldump_q]="${WALDUMP[*]} --quiet"
SR_CMD[zstd]="$DBB wal search --repo $WORK/repo-search-zstd"
SR_CMD[none]="$DBB wal search --repo $WORK/repo-search-none"
SR_ROWS=(waldump waldump_q zstd none)
once() { # command...: "wall seconds, user+sys seconds, peak RSS KiB" of one run, its output discarded
  local f; f=$(mktemp); chmod 666 "$f"
  sync
  "${RUN[@]}" /usr/bin/time -o "$f" -f '%e %U %S %M' "$@" >/dev/null 2>"$WORK/cmd.err" || die "failed: $* : $(tail -n 5 "$WORK/cmd.err")"
  tail -n1 "$f" | awk '{printf "%s %.2f %s\n", $1, $2 + $3, $4}'; rm -f "$f"
}
for r in "${SR_ROWS[@]}"; do
  read -ra c <<<"${SR_CMD[$r]}"
  as "${c[@]}" >/dev/null 2>&1 || die "failed: ${c[*]}"
  SR_S[$r]=$(median as "${c[@]}")
  read -r _ SR_CPU[$r] SR_RSS[$r] <<<"$(once "${c[@]}")"
  settle; read -r SR_COLD[$r] _ _ <<<"$(once "${c[@]}")"
  echo "    $r: $(s2 "${SR_S[$r]}") s warm (median of $RUNS), $(s2 "${SR_COLD[$r]}") s cold, ${SR_CPU[$r]} s CPU (warm), peak RSS ${SR_RSS[$r]} KiB"
done
rm -rf "$WORK/search-wal"
fi # search

lbl() { # tool key of the keepup, drain and replay parts: its label
  case $1 in
    dbb | dbb_s3) echo "dbbackup wal archive (sync)" ;;
    dbb_async | dbb_s3_async) echo "dbbackup --async --jobs 4" ;;
    pgbr_async | pgbr_s3_async) echo "pgBackRest archive-async, process-max=4" ;;
  esac
}
kind() { case $1 in *_s3*) echo S3 ;; *) echo local ;; esac; }
if want wal; then
printf '\n%-28s %10s %10s %8s %12s %10s\n' "tool" "archive ms" "fetch ms" "ratio" "repo bytes" "peak KiB"
printf '%-28s %10s %10s %8s %12s %10s\n' "pgBackRest lz4" "$(ms "$A_PGBR")" "$(ms "$F_PGBR")" "1.00" "$SZ_PGBR" "$M_A_PGBR/$M_F_PGBR"
for v in zstd lz4 enc; do
  case $v in zstd) label="dbbackup zstd (default)"; sz=$SZ_ZSTD;; lz4) label="dbbackup lz4"; sz=$SZ_LZ4;; enc) label="dbbackup zstd+aes-256-gcm"; sz=$SZ_ENC;; esac
  printf '%-28s %10s %10s %8s %12s %10s\n' "$label" "$(ms "${A[$v]}")" "$(ms "${F[$v]}")" "$(ratio "${A[$v]}" "$A_PGBR")/$(ratio "${F[$v]}" "$F_PGBR")" "$sz" "${M_A[$v]}/${M_F[$v]}"
done
fi
if want backup; then
printf '\n%-28s %10s %10s %8s %12s %10s\n' "tool (cluster $DBSIZE)" "backup s" "restore s" "ratio" "backup bytes" "peak KiB"
printf '%-28s %10.1f %10.1f %8s %12s %10s\n' "pgBackRest lz4, 2 processes" "$B_PGBR" "$R_PGBR" "1.00" "$BS_PGBR" "$BM_PGBR/$RM_PGBR"
printf '%-28s %10.1f %10.1f %8s %12s %10s\n' "dbbackup zstd, 2 jobs" "$B_DBB" "$R_DBB" "$(ratio "$B_DBB" "$B_PGBR")/$(ratio "$R_DBB" "$R_PGBR")" "$BS_DBB" "$BM_DBB/$RM_DBB"
fi
if want wal; then
# S3: ratio = over pgBackRest on S3; S3/local = over the same tool locally.
printf '\n%-28s %10s %10s %9s %9s %12s\n' "S3 (Garage, loopback)" "archive ms" "fetch ms" "ratio" "S3/local" "peak KiB"
printf '%-28s %10s %10s %9s %9s %12s\n' "pgBackRest lz4, https" "$(ms "$A_PGBR_S3")" "$(ms "$F_PGBR_S3")" "1.00" \
  "$(ratio "$A_PGBR_S3" "$A_PGBR")/$(ratio "$F_PGBR_S3" "$F_PGBR")" "$M_A_PGBR_S3/$M_F_PGBR_S3"
printf '%-28s %10s %10s %9s %9s %12s\n' "dbbackup zstd, http" "$(ms "$A_S3")" "$(ms "$F_S3")" "$(ratio "$A_S3" "$A_PGBR_S3")/$(ratio "$F_S3" "$F_PGBR_S3")" \
  "$(ratio "$A_S3" "${A[zstd]}")/$(ratio "$F_S3" "${F[zstd]}")" "$M_A_S3/$M_F_S3"
printf '%-28s %10s %10s %9s %9s %12s\n' "dbbackup zstd, https" "$(ms "$A_TLS")" "$(ms "$F_TLS")" "$(ratio "$A_TLS" "$A_PGBR_S3")/$(ratio "$F_TLS" "$F_PGBR_S3")" \
  "$(ratio "$A_TLS" "${A[zstd]}")/$(ratio "$F_TLS" "${F[zstd]}")" "$M_A_TLS/$M_F_TLS"
fi
if want backup; then
printf '\n%-28s %10s %10s %9s %9s %12s\n' "S3 (cluster $DBSIZE)" "backup s" "restore s" "ratio" "S3/local" "peak KiB"
printf '%-28s %10.1f %10.1f %9s %9s %12s\n' "pgBackRest lz4, https" "${B[pgbr_s3]}" "${R[pgbr_s3]}" "1.00" \
  "$(ratio "${B[pgbr_s3]}" "$B_PGBR")/$(ratio "${R[pgbr_s3]}" "$R_PGBR")" "${BM[pgbr_s3]}/${RM[pgbr_s3]}"
for t in dbb_s3 dbb_tls; do
  label="dbbackup zstd, http"; [ $t = dbb_tls ] && label="dbbackup zstd, https"
  printf '%-28s %10.1f %10.1f %9s %9s %12s\n' "$label" "${B[$t]}" "${R[$t]}" "$(ratio "${B[$t]}" "${B[pgbr_s3]}")/$(ratio "${R[$t]}" "${R[pgbr_s3]}")" \
    "$(ratio "${B[$t]}" "$B_DBB")/$(ratio "${R[$t]}" "$R_DBB")" "${BM[$t]}/${RM[$t]}"
done
fi
if want wal && want backup; then
echo
echo "ratio = dbbackup time / pgBackRest time (archive/fetch, backup/restore); goals: archive <= 0.4, fetch <= 0.4,"
echo "backup and restore <= 0.6, repository no larger than pgBackRest lz4, peak RSS <= 32768 KiB (archive/fetch)"
echo "and <= 262144 KiB (backup/restore). pgBackRest's RSS is its main process (it forks workers)."
echo "S3 goals: dbbackup backup and restore S3/local <= 1.3 and <= 0.6 of pgBackRest on the same Garage;"
echo "peak RSS of archive/fetch on S3 <= 49152 KiB. S3/local = the S3 time over the same tool's local time."
fi
# One verdict line per S3 goal, for the console and the page.
S3_GOALS=()
want backup && for t in dbb_s3 dbb_tls; do
  how=http; [ $t = dbb_tls ] && how=https
  for op in backup restore; do
    if [ $op = backup ]; then v=${B[$t]}; l=$B_DBB; p=${B[pgbr_s3]}; else v=${R[$t]}; l=$R_DBB; p=${R[pgbr_s3]}; fi
    S3_GOALS+=("dbbackup $op, $how: S3/local $(ratio "$v" "$l") (goal <= 1.3: $(goal "$(ratio "$v" "$l")" 1.3)), over pgBackRest $(ratio "$v" "$p") (goal <= 0.6: $(goal "$(ratio "$v" "$p")" 0.6))")
  done
done
want wal && for pair in "archive, http:$M_A_S3" "fetch, http:$M_F_S3" "archive, https:$M_A_TLS" "fetch, https:$M_F_TLS"; do
  S3_GOALS+=("dbbackup ${pair%%:*}: peak RSS ${pair##*:} KiB (goal <= 49152: $(goal "${pair##*:}" 49152))")
done
[ ${#S3_GOALS[@]} = 0 ] || printf '  %s\n' "${S3_GOALS[@]}"
if want incr; then
  IN_S_MED=$(med3 "${IN_S[@]}"); IN_M_MAX=$(max3 "${IN_M[@]}")
  printf '\n%-34s %12s %8s %6s %9s %11s %8s %9s %11s %6s\n' "incremental (cluster $DBSIZE)" "changed B" "incr s" "/full" "peak KiB" "stored B" "/changed" "pgbr s" "pgbr B" "/pgbr"
  IN_SC_MAX=0; IN_SP_MAX=0
  for i in 1 2 3; do
    sc=$(ratio "${IN_ST[$i]}" $((IN_CH[$i] * 8192))); sp=$(ratio "${IN_ST[$i]}" "${IN_PD[$i]}")
    [ "$(echo "$sc > $IN_SC_MAX" | bc -l)" = 1 ] && IN_SC_MAX=$sc
    [ "$(echo "$sp > $IN_SP_MAX" | bc -l)" = 1 ] && IN_SP_MAX=$sp
    printf '%-34s %12s %8.2f %6s %9s %11s %8s %9.2f %11s %6s\n' "round $i: UPDATE, --type incr" "$((IN_CH[$i] * 8192))" "${IN_S[$i]}" "$(ratio "${IN_S[$i]}" "$IN_FULL_S")" \
      "${IN_M[$i]}" "${IN_ST[$i]}" "$sc" "${IN_PS[$i]}" "${IN_PD[$i]}" "$sp"
  done
  printf '%-34s %8.2f s (%s); pgBackRest full %.2f s; full after the 3rd incr %.2f s, %s bytes stored\n' "full (dbbackup, 2 jobs)" "$IN_FULL_S" "$IN_FULL_FROM" "$IN_PFULL_S" "$IN_FULL2_S" "$IN_FULL2_ST"
  printf '%-34s %8.2f s (peak %s KiB); full %.2f s (peak %s KiB)\n' "restore, full + 3 incr chain" "$IN_R_CHAIN" "$IN_RM_CHAIN" "$IN_R_FULL" "$IN_RM_FULL"
  x=$(ratio "$IN_S_MED" "$IN_FULL_S"); y=$(ratio "$IN_R_CHAIN" "$IN_R_FULL")
  INCR_GOALS=(
    "incr backup time: ${x}x the full, median of 3 (goal <= 0.15: $(goal "$x" 0.15)); reading every file cold takes $(ratio "$IN_READ_S" "$IN_FULL_S")x the full"
    "incr backup peak RSS: $IN_M_MAX KiB, largest of 3 (goal <= 262144: $(goal "$IN_M_MAX" 262144))"
    "incr stored bytes: at most ${IN_SC_MAX}x the changed bytes (goal <= 3: $(goal "$IN_SC_MAX" 3))"
    "incr stored bytes: at most ${IN_SP_MAX}x pgBackRest's incr (goal <= 0.5: $(goal "$IN_SP_MAX" 0.5))"
    "restore of the full + 3 incr chain: ${y}x the restore of a full, medians of 3 (goal <= 1.2: $(goal "$y" 1.2))"
    "restored chain: $IN_RDIFF blocks of pgbench_accounts and its indexes differ from the primary's after the 3rd UPDATE"
  )
  printf '  %s\n' "${INCR_GOALS[@]}"
fi
if want replay; then
  rlbl() {
    case $1 in
      pgwal) echo "every segment in pg_wal" ;;
      dbb | dbb_s3) echo "dbbackup wal fetch${HAVE_PREFETCH:+ --prefetch 0}" ;;
      dbb_pf | dbb_s3_pf) echo "dbbackup wal fetch --prefetch $PF" ;;
      pgbr | pgbr_s3) echo "pgbackrest archive-get" ;;
      pgbr_async | pgbr_s3_async) echo "pgbackrest archive-get, async" ;;
    esac
  }
  # ratios: over the in-pg_wal recovery, and over pgBackRest async on the same kind of repository
  printf '\n%-40s %8s %8s %9s %10s\n' "replay of $REPLAY_SEGS segments" "total s" "ms/seg" "/pg_wal" "/pgbr async"
  for r in "${REPLAYS[@]}"; do
    k=local; [ "$r" = pgwal ] && k=; [[ $r == *_s3* ]] && k=S3
    if [ -z "${P[$r]:-}" ]; then printf '%-40s %s\n' "$(rlbl "$r")${k:+, $k}" "not measured (no --prefetch in this build)"; continue; fi
    a=pgbr_async; [ "$k" = S3 ] && a=pgbr_s3_async
    printf '%-40s %8.2f %8.1f %9s %10s\n' "$(rlbl "$r")${k:+, $k}" "${P[$r]}" "$(echo "scale=1; ${P[$r]} * 1000 / $REPLAY_SEGS" | bc -l)" \
      "$(ratio "${P[$r]}" "${P[pgwal]}")" "$([ -n "$k" ] && ratio "${P[$r]}" "${P[$a]}")"
  done
  REPLAY_GOALS=()
  for k in local S3; do
    r=dbb_pf; a=pgbr_async; [ $k = S3 ] && { r=dbb_s3_pf; a=pgbr_s3_async; }
    if [ -z "${P[$r]:-}" ]; then
      REPLAY_GOALS+=("replay with --prefetch, $k: not measured (\`dbbackup wal fetch\` of this build has no --prefetch)")
      continue
    fi
    x=$(ratio "${P[$r]}" "${P[pgwal]}"); y=$(ratio "${P[$r]}" "${P[$a]}")
    REPLAY_GOALS+=("replay with --prefetch $PF, $k: ${x}x the in-pg_wal recovery (goal <= 1.15: $(goal "$x" 1.15)), ${y}x pgBackRest async (goal <= 0.7: $(goal "$y" 0.7))")
  done
  printf '  %s\n' "${REPLAY_GOALS[@]}"
fi
if want keepup; then
  printf '\n%-46s %8s %7s %9s %9s %7s\n' "keeping up: pgbench ${KEEPUP_SECS} s" "lag seg" ".ready" "WAL MiB" "catch-up" "failed"
  for t in "${KU_TOOLS[@]}"; do
    printf '%-46s %8s %7s %9s %9.1f %7s\n' "$(lbl "$t"), $(kind "$t")" "${KU_LAG[$t]}" "${KU_READY[$t]}" "${KU_MIB[$t]}" "${KU_CATCH[$t]}" "${KU_FAIL[$t]}"
  done
  KEEPUP_GOALS=()
  for t in dbb_async dbb_s3_async; do
    KEEPUP_GOALS+=("$(lbl "$t"), $(kind "$t"): lag ${KU_LAG[$t]} segments after ${KEEPUP_SECS} s of pgbench (goal <= 2: $(goal "${KU_LAG[$t]}" 2))")
  done
  printf '  %s\n' "${KEEPUP_GOALS[@]}"
fi
if want drain; then
  printf '\n%-46s %8s %9s %8s %7s\n' "draining $BACKLOG ready segments" "s" "seg/s" "ratio" "failed"
  for t in "${DR_TOOLS[@]}"; do
    a=pgbr_async; [ "$(kind "$t")" = S3 ] && a=pgbr_s3_async
    printf '%-46s %8.2f %9.1f %8s %7s\n' "$(lbl "$t"), $(kind "$t")" "${DR[$t]}" "$(echo "scale=1; ${DR_N[$t]} / ${DR[$t]}" | bc -l)" "$(ratio "${DR[$t]}" "${DR[$a]}")" "${DR_FAIL[$t]}"
  done
  DRAIN_GOALS=()
  for t in dbb_async dbb_s3_async; do
    a=pgbr_async; [ $t = dbb_s3_async ] && a=pgbr_s3_async
    x=$(ratio "${DR[$t]}" "${DR[$a]}")
    DRAIN_GOALS+=("$(lbl "$t"), $(kind "$t"): drains ${DR_N[$t]} segments in $(s2 "${DR[$t]}") s, ${x}x pgBackRest async (goal <= 0.5: $(goal "$x" 0.5))")
  done
  printf '  %s\n' "${DRAIN_GOALS[@]}"
fi
RSS_GOALS=()
if want keepup || want drain; then
  for k in local S3; do
    v=$WRSS_LOCAL; [ $k = S3 ] && v=$WRSS_S3
    if [ "$v" = 0 ]; then RSS_GOALS+=("async worker (--jobs 4), $k: peak RSS not sampled (no worker was running at the end of a run)")
    else RSS_GOALS+=("async worker (--jobs 4), $k: peak RSS $v KiB (goal <= 65536: $(goal "$v" 65536))"); fi
  done
  printf '  %s\n' "${RSS_GOALS[@]}"
fi
if want search; then
  slbl() {
    case $1 in
      waldump) echo "pg_waldump (text to /dev/null)" ;;
      waldump_q) echo "pg_waldump --quiet" ;;
      zstd) echo "dbbackup wal search (zstd, default)" ;;
      none) echo "dbbackup wal search (--compress none)" ;;
    esac
  }
  printf '\n%-40s %8s %8s %8s %9s %9s %10s\n' "search of $SEARCH_SEGS segments" "warm s" "cold s" "CPU s" "/waldump" "/--quiet" "peak KiB"
  for r in "${SR_ROWS[@]}"; do
    printf '%-40s %8.2f %8.2f %8.2f %9s %9s %10s\n' "$(slbl "$r")" "${SR_S[$r]}" "${SR_COLD[$r]}" "${SR_CPU[$r]}" \
      "$(ratio "${SR_S[$r]}" "${SR_S[waldump]}")" "$(ratio "${SR_S[$r]}" "${SR_S[waldump_q]}")" "${SR_RSS[$r]}"
  done
  SEARCH_GOALS=()
  for v in zstd none; do
    x=$(ratio "${SR_S[$v]}" "${SR_S[waldump]}"); y=$(ratio "${SR_S[$v]}" "${SR_S[waldump_q]}")
    SEARCH_GOALS+=("$(slbl "$v"): ${x}x pg_waldump (goal <= 1.0: $(goal "$x" 1.0)), ${y}x pg_waldump --quiet; peak RSS ${SR_RSS[$v]} KiB (goal <= 65536: $(goal "${SR_RSS[$v]}" 65536))")
  done
  printf '  %s\n' "${SEARCH_GOALS[@]}"
fi
mkdir -p target/bench
# results.json: one member per part run.
JS=()
want wal && JS+=("$(cat <<JSON
"segments": ${#SEGS[@]}, "runs": $RUNS,
 "pgbackrest": {"archive_s": $A_PGBR, "fetch_s": $F_PGBR, "repo_bytes": $SZ_PGBR, "archive_rss_kib": $M_A_PGBR, "fetch_rss_kib": $M_F_PGBR},
 "dbbackup_zstd": {"archive_s": ${A[zstd]}, "fetch_s": ${F[zstd]}, "repo_bytes": $SZ_ZSTD, "archive_rss_kib": ${M_A[zstd]}, "fetch_rss_kib": ${M_F[zstd]}},
 "dbbackup_lz4": {"archive_s": ${A[lz4]}, "fetch_s": ${F[lz4]}, "repo_bytes": $SZ_LZ4, "archive_rss_kib": ${M_A[lz4]}, "fetch_rss_kib": ${M_F[lz4]}},
 "dbbackup_encrypted": {"archive_s": ${A[enc]}, "fetch_s": ${F[enc]}, "repo_bytes": $SZ_ENC, "archive_rss_kib": ${M_A[enc]}, "fetch_rss_kib": ${M_F[enc]}},
 "s3_wal": {"store": "garage $GARAGE_VERSION on loopback",
  "pgbackrest_https": {"archive_s": $A_PGBR_S3, "fetch_s": $F_PGBR_S3, "archive_rss_kib": $M_A_PGBR_S3, "fetch_rss_kib": $M_F_PGBR_S3},
  "dbbackup_http": {"archive_s": $A_S3, "fetch_s": $F_S3, "archive_rss_kib": $M_A_S3, "fetch_rss_kib": $M_F_S3},
  "dbbackup_https": {"archive_s": $A_TLS, "fetch_s": $F_TLS, "archive_rss_kib": $M_A_TLS, "fetch_rss_kib": $M_F_TLS}}
JSON
)")
want backup && JS+=("$(cat <<JSON
"base_backup": {"cluster": "$DBSIZE", "pgbackrest_s": $B_PGBR, "dbbackup_s": $B_DBB, "pgbackrest_bytes": $BS_PGBR, "dbbackup_bytes": $BS_DBB, "pgbackrest_rss_kib": $BM_PGBR, "dbbackup_rss_kib": $BM_DBB},
 "restore": {"pgbackrest_s": $R_PGBR, "dbbackup_s": $R_DBB, "pgbackrest_rss_kib": $RM_PGBR, "dbbackup_rss_kib": $RM_DBB},
 "s3_backup": {"store": "garage $GARAGE_VERSION on loopback",
  "pgbackrest_https": {"backup_s": ${B[pgbr_s3]}, "restore_s": ${R[pgbr_s3]}, "backup_rss_kib": ${BM[pgbr_s3]}, "restore_rss_kib": ${RM[pgbr_s3]}},
  "dbbackup_http": {"backup_s": ${B[dbb_s3]}, "restore_s": ${R[dbb_s3]}, "backup_rss_kib": ${BM[dbb_s3]}, "restore_rss_kib": ${RM[dbb_s3]}},
  "dbbackup_https": {"backup_s": ${B[dbb_tls]}, "restore_s": ${R[dbb_tls]}, "backup_rss_kib": ${BM[dbb_tls]}, "restore_rss_kib": ${RM[dbb_tls]}}}
JSON
)")
if want incr; then
  IN_RC_J=${IN_RC# }; IN_RF_J=${IN_RF# } # the runs, in their order
  j="\"incremental\": {\"cluster\": \"$DBSIZE\", \"scale\": $BENCH_SCALE, \"update_where\": \"$INCR_WHERE\", \"full_s\": $IN_FULL_S, \"full_rss_kib\": $IN_FULL_M, \"full_from\": \"$IN_FULL_FROM\", \"pgbackrest_full_s\": $IN_PFULL_S, \"read_all_files_s\": $IN_READ_S, \"rounds\": ["
  sep=
  for i in 1 2 3; do
    j+="$sep{\"rows_updated\": ${IN_ROWS[$i]}, \"changed_blocks\": ${IN_CH[$i]}, \"relation_blocks\": ${IN_BL[$i]}, \"changed_bytes\": $((IN_CH[$i] * 8192)), \"dbbackup_incr_s\": ${IN_S[$i]}, \"dbbackup_incr_rss_kib\": ${IN_M[$i]}, \"dbbackup_stored_bytes\": ${IN_ST[$i]}, \"pgbackrest_incr_s\": ${IN_PS[$i]}, \"pgbackrest_delta_bytes\": ${IN_PD[$i]}}"
    sep=", "
  done
  j+="], \"full_after_chain_s\": $IN_FULL2_S, \"full_after_chain_stored_bytes\": $IN_FULL2_ST, \"restore_chain_s\": $IN_R_CHAIN, \"restore_full_s\": $IN_R_FULL, \"restore_chain_runs_s\": [${IN_RC_J// /, }], \"restore_full_runs_s\": [${IN_RF_J// /, }], \"restore_chain_rss_kib\": $IN_RM_CHAIN, \"restore_full_rss_kib\": $IN_RM_FULL, \"restored_blocks_differing\": $IN_RDIFF}"
  JS+=("$j")
fi
jnum() { echo "${1:-null}"; } # a figure, or null when not measured
if want replay; then
  j="\"replay\": {\"segments\": $REPLAY_SEGS, \"prefetch\": $([ -n "$HAVE_PREFETCH" ] && echo "$PF" || echo null), \"seconds\": {"
  sep=
  for r in "${REPLAYS[@]}"; do j+="$sep\"$r\": $(jnum "${P[$r]:-}")"; sep=", "; done
  JS+=("$j}}")
fi
if want keepup; then
  j="\"keepup\": {\"seconds\": $KEEPUP_SECS, \"clients\": 4"
  for t in "${KU_TOOLS[@]}"; do
    j+=", \"$t\": {\"lag_segments\": ${KU_LAG[$t]}, \"ready\": ${KU_READY[$t]}, \"wal_mib\": ${KU_MIB[$t]}, \"catch_up_s\": ${KU_CATCH[$t]}, \"failed\": ${KU_FAIL[$t]}}"
  done
  JS+=("$j}")
fi
if want drain; then
  j="\"drain\": {\"backlog\": $BACKLOG"
  for t in "${DR_TOOLS[@]}"; do j+=", \"$t\": {\"segments\": ${DR_N[$t]}, \"seconds\": ${DR[$t]}, \"failed\": ${DR_FAIL[$t]}}"; done
  JS+=("$j}")
fi
if want keepup || want drain; then
  JS+=("\"async_worker_rss_kib\": {\"jobs\": 4, \"local\": $([ "$WRSS_LOCAL" = 0 ] && echo null || echo "$WRSS_LOCAL"), \"s3\": $([ "$WRSS_S3" = 0 ] && echo null || echo "$WRSS_S3")}")
fi
want monitor && JS+=("\"monitor\": {\"checks\": $MON_N, \"checks_per_s\": $MON_RATE, \"check_errors\": ${MON_ERRORS:-null}, \"scrape_median_s\": $SCRAPE_MED, \"scrape_p99_s\": $SCRAPE_P99, \"scrape_max_s\": $SCRAPE_MAX, \"metrics_bytes\": $MON_BYTES, \"rss_kib_after_100\": $MON_RSS_100, \"rss_kib_end\": $MON_RSS_END, \"peak_rss_kib\": $MON_HWM}")
if want search; then
  j="\"search\": {\"segments\": $SEARCH_SEGS, \"decompressed_mib\": $SEARCH_MIB, \"repo_wal_mib\": {\"zstd\": ${SR_MIB[zstd]}, \"none\": ${SR_MIB[none]}}, \"start_lsn\": \"$S\", \"end_lsn\": \"$E\", \"runs\": $RUNS, \"waldump_records\": ${WD_RECS:-null}"
  j+=", \"search_records\": {\"zstd\": ${SR_RECS[zstd]}, \"none\": ${SR_RECS[none]}}, \"search_segments\": {\"zstd\": ${SR_SEGS[zstd]}, \"none\": ${SR_SEGS[none]}}, \"none_start_lsn\": \"${SR_START[none]}\""
  for r in "${SR_ROWS[@]}"; do
    j+=", \"$r\": {\"warm_s\": ${SR_S[$r]}, \"cold_s\": ${SR_COLD[$r]}, \"cpu_s\": ${SR_CPU[$r]}, \"rss_kib\": ${SR_RSS[$r]}}"
  done
  JS+=("$j}")
fi
JS+=("\"parts\": \"${BENCH_ONLY:-all}\", \"store\": \"garage $GARAGE_VERSION on loopback\"")
{ printf '{'; (IFS=,; printf '%s' "${JS[*]}"); printf '}\n'; } > target/bench/results.json
echo "results: target/bench/results.json"

# The same figures as a Markdown page, with the machine they came from; a
# partial run does not replace the full run's page.
PAGE=docs/benchmarks.md; [ -z "$BENCH_ONLY" ] || PAGE=target/bench/benchmarks.md
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
  echo "# Benchmarks"
  echo
  echo "Written by \`./scripts/bench.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores ($CPU), $(free -g | awk '/Mem:/ {print $2}') GiB RAM,"
  echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), $(pgbackrest version). Ratios are dbbackup's time over pgBackRest's"
  echo "in the same run on the same data (lower is better); absolute times on shared machines vary."
  [ -z "$BENCH_ONLY" ] || { echo; echo "A partial run: only $BENCH_ONLY."; }
  if want wal; then
  echo
  echo "## WAL: one 16 MiB segment (median of $RUNS runs; ${#SEGS[@]} pgbench segments for sizes)"
  echo
  echo "| tool | archive ms | fetch ms | archive ratio | fetch ratio | repository bytes | peak RSS archive/fetch KiB |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  echo "| pgBackRest archive-push/get (lz4) | $(ms "$A_PGBR") | $(ms "$F_PGBR") | 1.00 | 1.00 | $SZ_PGBR | $M_A_PGBR / $M_F_PGBR |"
  for v in zstd lz4 enc; do
    case $v in zstd) label="dbbackup (zstd, default)"; sz=$SZ_ZSTD;; lz4) label="dbbackup lz4"; sz=$SZ_LZ4;; enc) label="dbbackup zstd + AES-256-GCM"; sz=$SZ_ENC;; esac
    echo "| $label | $(ms "${A[$v]}") | $(ms "${F[$v]}") | $(ratio "${A[$v]}" "$A_PGBR") | $(ratio "${F[$v]}" "$F_PGBR") | $sz | ${M_A[$v]} / ${M_F[$v]} |"
  done
  fi
  if want backup; then
  echo
  echo "## Base backup and restore: pgbench scale $BENCH_SCALE ($DBSIZE), 2 jobs / 2 processes"
  echo
  echo "| tool | backup s | restore s | backup ratio | restore ratio | backup bytes | peak RSS backup/restore KiB |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  echo "| pgBackRest (lz4, --process-max=2) | $(s2 "$B_PGBR") | $(s2 "$R_PGBR") | 1.00 | 1.00 | $BS_PGBR | $BM_PGBR / $RM_PGBR |"
  echo "| dbbackup (zstd, --jobs 2) | $(s2 "$B_DBB") | $(s2 "$R_DBB") | $(ratio "$B_DBB" "$B_PGBR") | $(ratio "$R_DBB" "$R_PGBR") | $BS_DBB | $BM_DBB / $RM_DBB |"
  echo
  echo "Median of 3 rounds, the tools taking turns (with the S3 runs below); before each restore the previous"
  echo "restored copy is removed, dirty pages synced and (as root) the page cache dropped. While a tool's backup"
  echo "runs, archive_command archives into that tool's repository only. Peak RSS is the largest of the 3."
  fi
  if want wal || want backup; then
  echo
  echo "Where a 16 MiB archive or fetch spends its time: process start-up and \`runuser\` (about 4 ms, both tools),"
  echo "reading and checksumming 16 MiB (BLAKE3, about 3 ms), zstd level 1 on two worker threads (archive) or"
  echo "decompression on a second thread (fetch), and for fetch writing 16 MiB into the page cache, which on"
  echo "these virtual machines is as expensive as the decompression. Base backups and restores run several files"
  echo "at once, each through a decode | check | write pipeline."
  echo
  echo "Goals: archive and fetch <= 0.4, backup and restore <= 0.6, repository no larger than pgBackRest's,"
  echo "peak RSS <= 32 MiB for archive/fetch and <= 256 MiB for backup/restore. pgBackRest's RSS is its main"
  echo "process only (it forks workers); each invocation here includes \`runuser\` start-up for both tools."
  echo
  fi
  if want wal || want backup; then
  echo "## S3: the same on Garage $GARAGE_VERSION (one node, loopback)"
  echo
  echo "Garage keeps metadata in sqlite and fsyncs data and metadata before it acknowledges a PUT (as the local"
  echo "repositories fsync what they write). pgBackRest speaks S3 over https only: stunnel terminates TLS in front"
  echo "of Garage, with a certificate from a CA made by openssl, which both tools verify. dbbackup is measured"
  echo "over plain http (accepted for a loopback endpoint) and over https through the same stunnel (the CA given"
  echo "by \`ca-file\` in its config). *ratio* is over pgBackRest on S3; *S3/local* is a tool's time on S3 over its own"
  echo "time on the local repository above."
  fi
  if want wal; then
  echo
  echo "### WAL: one 16 MiB segment (median of $RUNS runs; each archive starts with the segment's object deleted)"
  echo
  echo "| tool | archive ms | fetch ms | archive ratio | fetch ratio | S3/local archive | S3/local fetch | peak RSS archive/fetch KiB |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  echo "| pgBackRest archive-push/get (lz4, https) | $(ms "$A_PGBR_S3") | $(ms "$F_PGBR_S3") | 1.00 | 1.00 | $(ratio "$A_PGBR_S3" "$A_PGBR") | $(ratio "$F_PGBR_S3" "$F_PGBR") | $M_A_PGBR_S3 / $M_F_PGBR_S3 |"
  echo "| dbbackup (zstd, http) | $(ms "$A_S3") | $(ms "$F_S3") | $(ratio "$A_S3" "$A_PGBR_S3") | $(ratio "$F_S3" "$F_PGBR_S3") | $(ratio "$A_S3" "${A[zstd]}") | $(ratio "$F_S3" "${F[zstd]}") | $M_A_S3 / $M_F_S3 |"
  echo "| dbbackup (zstd, https) | $(ms "$A_TLS") | $(ms "$F_TLS") | $(ratio "$A_TLS" "$A_PGBR_S3") | $(ratio "$F_TLS" "$F_PGBR_S3") | $(ratio "$A_TLS" "${A[zstd]}") | $(ratio "$F_TLS" "${F[zstd]}") | $M_A_TLS / $M_F_TLS |"
  fi
  if want backup; then
  echo
  echo "### Base backup and restore: the same cluster, 2 jobs / 2 processes"
  echo
  echo "| tool | backup s | restore s | backup ratio | restore ratio | S3/local backup | S3/local restore | peak RSS backup/restore KiB |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  echo "| pgBackRest (lz4, --process-max=2, https) | $(s2 "${B[pgbr_s3]}") | $(s2 "${R[pgbr_s3]}") | 1.00 | 1.00 | $(ratio "${B[pgbr_s3]}" "$B_PGBR") | $(ratio "${R[pgbr_s3]}" "$R_PGBR") | ${BM[pgbr_s3]} / ${RM[pgbr_s3]} |"
  for t in dbb_s3 dbb_tls; do
    label="dbbackup (zstd, --jobs 2, http)"; [ $t = dbb_tls ] && label="dbbackup (zstd, --jobs 2, https)"
    echo "| $label | $(s2 "${B[$t]}") | $(s2 "${R[$t]}") | $(ratio "${B[$t]}" "${B[pgbr_s3]}") | $(ratio "${R[$t]}" "${R[pgbr_s3]}") | $(ratio "${B[$t]}" "$B_DBB") | $(ratio "${R[$t]}" "$R_DBB") | ${BM[$t]} / ${RM[$t]} |"
  done
  echo
  echo "The same 3 rounds as the local runs, all five taking turns, restores counted until the copy is durable."
  echo "Both dbbackup rows use one repository; during the https backup its WAL is archived over http."
  fi
  if want wal || want backup; then
  echo
  echo "Where the S3 time goes, in this version: \`wal archive\` takes the repository's WAL lease (a GET, a"
  echo "conditional PUT and a GET to check it, for stores that ignore conditional writes as Garage does), uploads,"
  echo "and removes the lease; \`wal fetch\` takes no lease. Base backups and restores store and read one object per"
  echo "file of the cluster (about a thousand for pgbench, most of them small), with 3 requests in flight per --jobs"
  echo "worker, so request latency rather than bandwidth decides for small files; pgBackRest (repo-bundle off, its"
  echo "default) also stores one object per file. Garage (its own compression off: both tools send compressed data),"
  echo "stunnel and the tool share the same 2 cores."
  echo
  echo "Goals on S3: dbbackup's backup and restore within 1.3x of the same operation on a local repository,"
  echo "and <= 0.6 of pgBackRest's on the same Garage; peak RSS <= 48 MiB for archive and fetch. In this run:"
  echo
  printf -- '- %s\n' "${S3_GOALS[@]}"
  fi
  if want incr; then
  echo
  echo "## Incremental backups: pgbench scale $BENCH_SCALE ($DBSIZE), 2 jobs / 2 processes"
  echo
  echo "One cluster, three rounds of: \`UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE $INCR_WHERE\`"
  echo "(${IN_ROWS[1]} of the $((BENCH_SCALE * 100000)) rows), CHECKPOINT, then \`dbbackup backup base --type incr\` and \`pgbackrest --type=incr\` (file level)."
  echo "*changed*: the 8 KiB blocks that differ, measured on the files: every block of pgbench_accounts, its TOAST"
  echo "table and their indexes (all forks and segments) hashed after a CHECKPOINT before the UPDATE and after the"
  echo "CHECKPOINT that follows it; blocks added count as changed. The other files of the cluster are not counted"
  echo "(a backup stores their changes too). Rows spread over the whole table change most of its blocks: an"
  echo "updated row's block, the block its new version goes to, the index leaves; the next round's scan prunes"
  echo "and hints the blocks of the previous round's dead versions. *stored*: the incr's \`stored_bytes\`"
  echo "(\`backup show --json\`: deltas and block maps, compressed); *pgBackRest*: its \`info --output=json\` repository"
  echo "delta. The full is $IN_FULL_FROM"
  echo "($(s2 "$IN_FULL_S") s; pgBackRest's full $(s2 "$IN_PFULL_S") s). An incr reads and hashes every file: reading every file of the"
  echo "data directory cold (\`cat\`, two at once) took $(s2 "$IN_READ_S") s, the least any backup that reads them all can take."
  echo "Page cache dropped before each backup and restore (and that read)."
  echo
  echo "| round | changed bytes (blocks, share) | dbbackup incr s | /full | peak RSS KiB | stored bytes | /changed | pgBackRest incr s | pgBackRest bytes | /pgBackRest |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for i in 1 2 3; do
    echo "| $i | $((IN_CH[$i] * 8192)) (${IN_CH[$i]} of ${IN_BL[$i]}, $((IN_CH[$i] * 100 / IN_BL[$i])) %) | $(s2 "${IN_S[$i]}") | $(ratio "${IN_S[$i]}" "$IN_FULL_S") | ${IN_M[$i]} | ${IN_ST[$i]} | $(ratio "${IN_ST[$i]}" $((IN_CH[$i] * 8192))) | $(s2 "${IN_PS[$i]}") | ${IN_PD[$i]} | $(ratio "${IN_ST[$i]}" "${IN_PD[$i]}") |"
  done
  echo
  echo "Then a \`--type full\` of the same data ($(s2 "$IN_FULL2_S") s, $IN_FULL2_ST bytes stored), and \`restore pitr --target-immediate"
  echo "--jobs 2\` of the full + 3 incr chain (the 3rd incr) against that full: 3 rounds taking turns, medians."
  echo
  echo "| restore | s | peak RSS KiB |"
  echo "|---|---:|---:|"
  echo "| full + 3 incr chain | $(s2 "$IN_R_CHAIN") | $IN_RM_CHAIN |"
  echo "| full | $(s2 "$IN_R_FULL") | $IN_RM_FULL |"
  echo
  printf -- '- %s\n' "${INCR_GOALS[@]}"
  fi
  if want keepup || want drain || want replay; then
  echo
  echo "## Archiving under load and replay: local and S3 (Garage $GARAGE_VERSION, loopback)"
  echo
  echo "One cluster, its repositories and the Garage above; on S3, dbbackup over http and pgBackRest over https"
  echo "(through stunnel). Asynchronous archiving: dbbackup \`wal archive --async --jobs 4\` (a spool per"
  echo "repository) and pgBackRest \`archive-async=y\`, \`process-max=4\` (\`spool-path\` of its own); the synchronous"
  echo "\`dbbackup wal archive\` is there for reference. Each run starts with nothing waiting to be archived, and"
  echo "dbbackup's worker is stopped after its run (it would push the next tool's ready segments)."
  fi
  if want keepup; then
  echo
  echo "### Keeping up: pgbench at full speed for $KEEPUP_SECS s (4 clients, 2 threads, synchronous_commit off)"
  echo
  echo "Lag: complete segments not yet archived when pgbench stops (between the segment being written,"
  echo "\`pg_walfile_name(pg_current_wal_lsn())\`, and \`pg_stat_archiver.last_archived_wal\`); *.ready*: the files"
  echo "waiting in \`pg_wal/archive_status\` then; *catch-up*: seconds until none waits. A CHECKPOINT before each run."
  echo
  echo "| repository | archive_command | lag (segments) | .ready | WAL written MiB | catch-up s | failed calls |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for t in "${KU_TOOLS[@]}"; do
    echo "| $(kind "$t") | $(lbl "$t") | ${KU_LAG[$t]} | ${KU_READY[$t]} | ${KU_MIB[$t]} | $(printf '%.1f' "${KU_CATCH[$t]}") | ${KU_FAIL[$t]} |"
  done
  echo
  printf -- '- %s\n' "${KEEPUP_GOALS[@]}"
  fi
  if want drain; then
  echo
  echo "### Draining a backlog of $BACKLOG ready segments"
  echo
  echo "Archiving broken (archive_command empty: PostgreSQL keeps the segments as .ready), $BACKLOG segments"
  echo "made by as many \`pg_switch_wal()\` calls after a one-row insert each (whole 16 MiB segments, almost all"
  echo "zeros: the cost is per segment, not per byte); then the tool's archive_command is set and the"
  echo "configuration reloaded, timed until \`pg_stat_archiver.archived_count\` has grown by the backlog (polled every 100 ms)."
  echo "*ratio* is over pgBackRest async on the same kind of repository."
  echo
  echo "| repository | archive_command | segments | seconds | segments/s | ratio | failed calls |"
  echo "|---|---|---:|---:|---:|---:|---:|"
  for t in "${DR_TOOLS[@]}"; do
    a=pgbr_async; [ "$(kind "$t")" = S3 ] && a=pgbr_s3_async
    echo "| $(kind "$t") | $(lbl "$t") | ${DR_N[$t]} | $(s2 "${DR[$t]}") | $(echo "scale=1; ${DR_N[$t]} / ${DR[$t]}" | bc -l) | $(ratio "${DR[$t]}" "${DR[$a]}") | ${DR_FAIL[$t]} |"
  done
  echo
  printf -- '- %s\n' "${DRAIN_GOALS[@]}"
  fi
  if want keepup || want drain; then
  echo
  echo "### Peak RSS of dbbackup's async worker (--jobs 4)"
  echo
  echo "\`VmHWM\` of the \`wal archive-worker\` process, read from /proc at the end of each keepup and drain run"
  echo "(before the worker is stopped); the largest per kind of repository. Goal: <= 64 MiB."
  echo
  printf -- '- %s\n' "${RSS_GOALS[@]}"
  fi
  if want replay; then
  echo
  echo "### WAL replay: a recovery through $REPLAY_SEGS segments of pgbench WAL"
  echo
  echo "One base backup, then pgbench WAL archived into all four repositories; copies of one restored data"
  echo "directory recover to the end of the archive, each with another restore_command, timed from start until"
  echo "recovery has ended (and checked to reach the same rows). *every segment in pg_wal*: the segments copied"
  echo "into pg_wal beforehand, \`restore_command = 'false'\`. pgBackRest async: \`archive-async=y\`, \`process-max=4\`,"
  echo "\`archive-get-queue-max\` at its default 128 MiB (8 segments, as dbbackup's default \`--prefetch 8\`)."
  [ -z "$HAVE_PREFETCH" ] || echo "The --prefetch rows add what \`restore pitr\` writes by default: \`$PF_OPTS\`."
  echo "Page cache dropped before each recovery. */pg_wal* is over the in-pg_wal recovery, */pgBackRest async* over"
  echo "pgBackRest async on the same kind of repository."
  echo
  echo "| restore_command | repository | total s | ms per segment | /pg_wal | /pgBackRest async |"
  echo "|---|---|---:|---:|---:|---:|"
  for r in "${REPLAYS[@]}"; do
    k=local; [ "$r" = pgwal ] && k=-; [[ $r == *_s3* ]] && k=S3
    if [ -z "${P[$r]:-}" ]; then echo "| $(rlbl "$r") | $k | not measured: no --prefetch in this build | | | |"; continue; fi
    a=pgbr_async; [ "$k" = S3 ] && a=pgbr_s3_async
    echo "| $(rlbl "$r") | $k | $(s2 "${P[$r]}") | $(echo "scale=1; ${P[$r]} * 1000 / $REPLAY_SEGS" | bc -l) | $(ratio "${P[$r]}" "${P[pgwal]}") | $([ "$k" != - ] && ratio "${P[$r]}" "${P[$a]}") |"
  done
  echo
  printf -- '- %s\n' "${REPLAY_GOALS[@]}"
  fi
  if want monitor; then
  echo
  echo "## Monitor: scrapes and memory"
  echo
  echo "\`dbbackup monitor --interval 0.01\` on the bench cluster and its local repository (one base backup, the"
  echo "archive of the run): checks back to back, each a full \`pitr status\` (server queries, repository listing,"
  echo "manifests, a probe write). 1000 scrapes of /metrics over one connection while checks run; curl's time per"
  echo "transfer. RSS from /proc of the monitor process."
  echo
  echo "| measure | value | goal |"
  echo "|---|---:|---|"
  echo "| scrape, median | $(printf '%.3f' "$(echo "$SCRAPE_MED * 1000" | bc -l)") ms | |"
  echo "| scrape, p99 | $(printf '%.3f' "$(echo "$SCRAPE_P99 * 1000" | bc -l)") ms | < 10 ms: $(goal "$SCRAPE_P99" 0.010) |"
  echo "| scrape, slowest of 1000 | $(printf '%.3f' "$(echo "$SCRAPE_MAX * 1000" | bc -l)") ms | |"
  echo "| /metrics size | $MON_BYTES bytes | |"
  echo "| checks run | $MON_N ($MON_RATE per s; the last took $(ms "$MON_CHECK_S") ms; $MON_ERRORS failed) | |"
  echo "| RSS after 100 checks | $MON_RSS_100 KiB | |"
  echo "| RSS after $MON_N checks | $MON_RSS_END KiB | |"
  echo "| peak RSS (VmHWM) | $MON_HWM KiB | <= 32 MiB: $(goal "$MON_HWM" 32768) |"
  fi
  if want search; then
  echo
  echo "## WAL search: $SEARCH_SEGS segments of pgbench WAL, against pg_waldump"
  echo
  echo "A cluster archiving into two dbbackup repositories (the default zstd, and \`--compress none\`), a base"
  echo "backup in each, pgbench until at least $SEARCH_WANT segments of 16 MiB after the backup's start ($S) were written,"
  echo "then one \`DROP TABLE\` of a small table and \`pg_switch_wal()\`: $SEARCH_SEGS segments ($SEARCH_MIB MiB; ${SR_MIB[zstd]} MiB"
  echo "stored with zstd, ${SR_MIB[none]} MiB with none). pg_waldump (PostgreSQL 15) reads the same segments, fetched"
  echo "with \`dbbackup wal fetch\` into a directory, \`--start $S --end $E\` (the end of the last segment);"
  echo "its text goes to /dev/null, or with \`--quiet\` it decodes without printing (the stricter baseline)."
  echo "\`dbbackup wal search --repo R\` reads from its backup's start to the end of the archive, through the"
  echo "verified decode path (decompress, BLAKE3 check) and the record reader, and must report the DROP TABLE."
  echo "pg_waldump counts $WD_RECS records; wal search ${SR_RECS[zstd]} (zstd) and ${SR_RECS[none]} (none: its backup"
  echo "started at ${SR_START[none]}, ${SR_SEGS[none]} segments against ${SR_SEGS[zstd]})."
  echo "*warm*: median of $RUNS runs with the page cache warm (as for the one-segment WAL medians: not dropped; one untimed"
  echo "run first); *cold*: one run after the page cache was dropped; *CPU*: user + system of one warm run"
  echo "(wal search reads and decompresses, checks, and parses on separate threads; pg_waldump uses one); peak RSS of"
  echo "the tool itself."
  echo
  echo "| command | warm s | cold s | CPU s | /pg_waldump | /pg_waldump --quiet | peak RSS KiB |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for r in "${SR_ROWS[@]}"; do
    echo "| $(slbl "$r") | $(s2 "${SR_S[$r]}") | $(s2 "${SR_COLD[$r]}") | ${SR_CPU[$r]} | $(ratio "${SR_S[$r]}" "${SR_S[waldump]}") | $(ratio "${SR_S[$r]}" "${SR_S[waldump_q]}") | ${SR_RSS[$r]} |"
  done
  echo
  printf -- '- %s\n' "${SEARCH_GOALS[@]}"
  fi
} > "$PAGE"
echo "report: $PAGE"
