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
#   replay:  WAL replay time per segment through each restore_command
#   S3:      archive, fetch, backup and restore again with the repositories
#            in a one-node Garage on loopback: pgBackRest over https (it
#            speaks S3 over TLS only; stunnel terminates TLS in front of
#            Garage), dbbackup over http and, like pgBackRest, over https
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
cargo build --release -q -p dbbackup

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
cp target/release/dbbackup "$WORK/dbbackup"; chmod 755 "$WORK/dbbackup"
DBB="$WORK/dbbackup"
PORT=$((20000 + RANDOM % 20000))
GARAGE_PID=; STUNNEL_PID=
cleanup() {
  as "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  local p
  for p in $STUNNEL_PID $GARAGE_PID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
die() { echo "bench: $*" >&2; exit 1; }

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
DBB_TLS=("$DBB")

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

echo "==> base backup and restore of a pgbench cluster (scale ${BENCH_SCALE:=100}), 2 jobs each"
as "$PGBIN/pgbench" -q -i -s "$BENCH_SCALE" -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
DBSIZE=$("${PSQL[@]}" -c "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
echo "    cluster size $DBSIZE"
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
"${PSQL[@]}" -c "ALTER SYSTEM SET archive_mode = on" -c "ALTER SYSTEM SET archive_command = '${ARCH[local]}'"
ARCH_NOW=${ARCH[local]}
as "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w restart >/dev/null
archive_into() { # tool: archive_command archives into its repository only
  local cmd=${ARCH[$1]}
  [ "$cmd" = "$ARCH_NOW" ] && return 0
  # WAL already waiting goes where it was meant to.
  for _ in $(seq 1 1200); do
    compgen -G "$WORK/data/pg_wal/archive_status/*.ready" >/dev/null || break
    sleep 0.1
  done
  "${PSQL[@]}" -c "ALTER SYSTEM SET archive_command = '$cmd'" -c "SELECT pg_reload_conf()" >/dev/null
  sleep 1 # the archiver rereads its configuration on SIGHUP
  ARCH_NOW=$cmd
}
timed() { # sets T (seconds) and MEM (peak KiB) of one run; stops the bench if it fails
  local t0 t1 rssf
  rssf=$(mktemp); chmod 666 "$rssf"
  sync # the previous run's dirty pages are not this run's cost
  t0=$(date +%s.%N)
  "${RUN[@]}" /usr/bin/time -o "$rssf" -f '%M' "$@" >/dev/null 2>"$WORK/cmd.err" ||
    die "failed: $* : $(grep -v 'Command exited' "$WORK/cmd.err" | tail -n 5)"
  t1=$(date +%s.%N)
  T=$(printf '%.6f' "$(echo "$t1 - $t0" | bc -l)"); MEM=$(tail -n1 "$rssf"); rm -f "$rssf"
}
med3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
max3() { printf '%s\n' "$@" | sort -g | tail -n1; }
fresh_dir() { rm -rf "$1"; mkdir -p "$1"; chown postgres "$1" 2>/dev/null || true; chmod 700 "$1"; }
settle() { sync; if [ "$(id -u)" = 0 ]; then echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true; fi; }
backup_cmd() { # tool: sets CMD
  local conn=(--host "$WORK" --port "$PORT" --user postgres)
  case $1 in
    pgbr) CMD=("${PGBR[@]}" --type=full --process-max=2 --start-fast backup) ;;
    pgbr_s3) CMD=("${PGBR_S3[@]}" --type=full --process-max=2 --start-fast backup) ;;
    dbb) CMD=("$DBB" backup base --fast --jobs 2 --repo "$WORK/repo-zstd" "${conn[@]}") ;;
    dbb_s3) CMD=("$DBB" backup base --fast --jobs 2 --config "$S3_CONF" "${conn[@]}") ;;
    dbb_tls) CMD=("${DBB_TLS[@]}" backup base --fast --jobs 2 --config "$S3_TLS_CONF" "${conn[@]}") ;;
  esac
}
restore_cmd() { # tool dir: sets CMD
  local opts=(--base-backup latest --target-immediate --jobs 2 --target-dir "$2" --force)
  case $1 in
    pgbr) CMD=("${PGBR[@]}" --process-max=2 --pg1-path="$2" --type=immediate restore) ;;
    pgbr_s3) CMD=("${PGBR_S3[@]}" --process-max=2 --pg1-path="$2" --type=immediate restore) ;;
    dbb) CMD=("$DBB" restore pitr --repo "$WORK/repo-zstd" "${opts[@]}") ;;
    dbb_s3) CMD=("$DBB" restore pitr --config "$S3_CONF" "${opts[@]}") ;;
    dbb_tls) CMD=("${DBB_TLS[@]}" restore pitr --config "$S3_TLS_CONF" "${opts[@]}") ;;
  esac
}
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

echo "==> WAL replay through the restore_command (${REPLAY_SECONDS:=20} s of pgbench WAL)"
# One backup, then WAL, archived into both repositories; the same restored
# copy replays it twice: once with `dbbackup wal fetch`, once with
# `pgbackrest archive-get` as restore_command.
as "$DBB" backup base --fast --jobs 2 --repo "$WORK/repo-zstd" --host "$WORK" --port "$PORT" --user postgres >/dev/null 2>&1
FIRST=$("${PSQL[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
as "$PGBIN/pgbench" -n -T "$REPLAY_SECONDS" -c 2 -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
LAST=$("${PSQL[@]}" -c "SELECT pg_walfile_name(pg_current_wal_lsn())")
"${PSQL[@]}" -c "SELECT pg_switch_wal()" >/dev/null
for _ in $(seq 1 600); do
  [ "$("${PSQL[@]}" -c "SELECT last_archived_wal >= '$LAST' FROM pg_stat_archiver")" = t ] && break
  sleep 0.1
done
REPLAY_SEGS=$(( 16#${LAST:16:8} - 16#${FIRST:16:8} + 1 ))
as "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null
fresh_dir "$WORK/rp"
as "$DBB" restore pitr --repo "$WORK/repo-zstd" --base-backup latest --jobs 2 --target-dir "$WORK/rp" --force --archive-mode off >/dev/null 2>&1
cp -a "$WORK/rp" "$WORK/rp2"
echo "restore_command = 'pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench --pg1-path=$WORK/rp2 archive-get %f \"%p\"'" >>"$WORK/rp2/postgresql.auto.conf"
replay() { # seconds from start until recovery has ended
  local dir=$1 p=$((PORT + 1)) t0 t1
  t0=$(date +%s.%N)
  as "$PGBIN/pg_ctl" -D "$dir" -l "$dir/replay.log" -o "-p $p -c unix_socket_directories=$WORK" -w -t 600 start >/dev/null
  for _ in $(seq 1 12000); do
    [ "$(as "$PGBIN/psql" -X -A -t -q -h "$WORK" -p "$p" -U postgres -d postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  as "$PGBIN/pg_ctl" -D "$dir" -m immediate -w stop >/dev/null
  printf '%.6f\n' "$(echo "$t1 - $t0" | bc -l)"
}
settle; P_PGBR=$(replay "$WORK/rp2"); settle; P_DBB=$(replay "$WORK/rp")
as "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null

ratio() { echo "scale=2; $1 / $2" | bc -l; }
ms() { echo "scale=1; $1 * 1000 / 1" | bc -l; }
s2() { printf '%.2f' "$1"; }
goal() { # value limit: "met" or "missed"
  if [ "$(echo "$1 <= $2" | bc -l)" = 1 ]; then echo met; else echo missed; fi
}
printf '\n%-28s %10s %10s %8s %12s %10s\n' "tool" "archive ms" "fetch ms" "ratio" "repo bytes" "peak KiB"
printf '%-28s %10s %10s %8s %12s %10s\n' "pgBackRest lz4" "$(ms "$A_PGBR")" "$(ms "$F_PGBR")" "1.00" "$SZ_PGBR" "$M_A_PGBR/$M_F_PGBR"
for v in zstd lz4 enc; do
  case $v in zstd) label="dbbackup zstd (default)"; sz=$SZ_ZSTD;; lz4) label="dbbackup lz4"; sz=$SZ_LZ4;; enc) label="dbbackup zstd+aes-256-gcm"; sz=$SZ_ENC;; esac
  printf '%-28s %10s %10s %8s %12s %10s\n' "$label" "$(ms "${A[$v]}")" "$(ms "${F[$v]}")" "$(ratio "${A[$v]}" "$A_PGBR")/$(ratio "${F[$v]}" "$F_PGBR")" "$sz" "${M_A[$v]}/${M_F[$v]}"
done
printf '\n%-28s %10s %10s %8s %12s %10s\n' "tool (cluster $DBSIZE)" "backup s" "restore s" "ratio" "backup bytes" "peak KiB"
printf '%-28s %10.1f %10.1f %8s %12s %10s\n' "pgBackRest lz4, 2 processes" "$B_PGBR" "$R_PGBR" "1.00" "$BS_PGBR" "$BM_PGBR/$RM_PGBR"
printf '%-28s %10.1f %10.1f %8s %12s %10s\n' "dbbackup zstd, 2 jobs" "$B_DBB" "$R_DBB" "$(ratio "$B_DBB" "$B_PGBR")/$(ratio "$R_DBB" "$R_PGBR")" "$BS_DBB" "$BM_DBB/$RM_DBB"
PS_DBB=$(echo "scale=1; $P_DBB * 1000 / $REPLAY_SEGS" | bc -l); PS_PGBR=$(echo "scale=1; $P_PGBR * 1000 / $REPLAY_SEGS" | bc -l)
printf '\n%-28s %10s %10s %8s\n' "replay of $REPLAY_SEGS segments" "total s" "ms/seg" "ratio"
printf '%-28s %10.1f %10s %8s\n' "pgbackrest archive-get" "$P_PGBR" "$PS_PGBR" "1.00"
printf '%-28s %10.1f %10s %8s\n' "dbbackup wal fetch" "$P_DBB" "$PS_DBB" "$(ratio "$P_DBB" "$P_PGBR")"
# S3: ratio = over pgBackRest on S3; S3/local = over the same tool locally.
printf '\n%-28s %10s %10s %9s %9s %12s\n' "S3 (Garage, loopback)" "archive ms" "fetch ms" "ratio" "S3/local" "peak KiB"
printf '%-28s %10s %10s %9s %9s %12s\n' "pgBackRest lz4, https" "$(ms "$A_PGBR_S3")" "$(ms "$F_PGBR_S3")" "1.00" \
  "$(ratio "$A_PGBR_S3" "$A_PGBR")/$(ratio "$F_PGBR_S3" "$F_PGBR")" "$M_A_PGBR_S3/$M_F_PGBR_S3"
printf '%-28s %10s %10s %9s %9s %12s\n' "dbbackup zstd, http" "$(ms "$A_S3")" "$(ms "$F_S3")" "$(ratio "$A_S3" "$A_PGBR_S3")/$(ratio "$F_S3" "$F_PGBR_S3")" \
  "$(ratio "$A_S3" "${A[zstd]}")/$(ratio "$F_S3" "${F[zstd]}")" "$M_A_S3/$M_F_S3"
printf '%-28s %10s %10s %9s %9s %12s\n' "dbbackup zstd, https" "$(ms "$A_TLS")" "$(ms "$F_TLS")" "$(ratio "$A_TLS" "$A_PGBR_S3")/$(ratio "$F_TLS" "$F_PGBR_S3")" \
  "$(ratio "$A_TLS" "${A[zstd]}")/$(ratio "$F_TLS" "${F[zstd]}")" "$M_A_TLS/$M_F_TLS"
printf '\n%-28s %10s %10s %9s %9s %12s\n' "S3 (cluster $DBSIZE)" "backup s" "restore s" "ratio" "S3/local" "peak KiB"
printf '%-28s %10.1f %10.1f %9s %9s %12s\n' "pgBackRest lz4, https" "${B[pgbr_s3]}" "${R[pgbr_s3]}" "1.00" \
  "$(ratio "${B[pgbr_s3]}" "$B_PGBR")/$(ratio "${R[pgbr_s3]}" "$R_PGBR")" "${BM[pgbr_s3]}/${RM[pgbr_s3]}"
for t in dbb_s3 dbb_tls; do
  label="dbbackup zstd, http"; [ $t = dbb_tls ] && label="dbbackup zstd, https"
  printf '%-28s %10.1f %10.1f %9s %9s %12s\n' "$label" "${B[$t]}" "${R[$t]}" "$(ratio "${B[$t]}" "${B[pgbr_s3]}")/$(ratio "${R[$t]}" "${R[pgbr_s3]}")" \
    "$(ratio "${B[$t]}" "$B_DBB")/$(ratio "${R[$t]}" "$R_DBB")" "${BM[$t]}/${RM[$t]}"
done
echo
echo "ratio = dbbackup time / pgBackRest time (archive/fetch, backup/restore); goals: archive <= 0.4, fetch <= 0.4,"
echo "backup and restore <= 0.6, repository no larger than pgBackRest lz4, peak RSS <= 32768 KiB (archive/fetch)"
echo "and <= 262144 KiB (backup/restore). pgBackRest's RSS is its main process (it forks workers)."
echo "S3 goals: dbbackup backup and restore S3/local <= 1.3 and <= 0.6 of pgBackRest on the same Garage;"
echo "peak RSS of archive/fetch on S3 <= 49152 KiB. S3/local = the S3 time over the same tool's local time."
# One verdict line per S3 goal, for the console and the page.
S3_GOALS=()
for t in dbb_s3 dbb_tls; do
  how=http; [ $t = dbb_tls ] && how=https
  for op in backup restore; do
    if [ $op = backup ]; then v=${B[$t]}; l=$B_DBB; p=${B[pgbr_s3]}; else v=${R[$t]}; l=$R_DBB; p=${R[pgbr_s3]}; fi
    S3_GOALS+=("dbbackup $op, $how: S3/local $(ratio "$v" "$l") (goal <= 1.3: $(goal "$(ratio "$v" "$l")" 1.3)), over pgBackRest $(ratio "$v" "$p") (goal <= 0.6: $(goal "$(ratio "$v" "$p")" 0.6))")
  done
done
for pair in "archive, http:$M_A_S3" "fetch, http:$M_F_S3" "archive, https:$M_A_TLS" "fetch, https:$M_F_TLS"; do
  S3_GOALS+=("dbbackup ${pair%%:*}: peak RSS ${pair##*:} KiB (goal <= 49152: $(goal "${pair##*:}" 49152))")
done
printf '  %s\n' "${S3_GOALS[@]}"
mkdir -p target/bench
cat > target/bench/results.json <<JSON
{"segments": ${#SEGS[@]}, "runs": $RUNS,
 "pgbackrest": {"archive_s": $A_PGBR, "fetch_s": $F_PGBR, "repo_bytes": $SZ_PGBR, "archive_rss_kib": $M_A_PGBR, "fetch_rss_kib": $M_F_PGBR},
 "dbbackup_zstd": {"archive_s": ${A[zstd]}, "fetch_s": ${F[zstd]}, "repo_bytes": $SZ_ZSTD, "archive_rss_kib": ${M_A[zstd]}, "fetch_rss_kib": ${M_F[zstd]}},
 "dbbackup_lz4": {"archive_s": ${A[lz4]}, "fetch_s": ${F[lz4]}, "repo_bytes": $SZ_LZ4, "archive_rss_kib": ${M_A[lz4]}, "fetch_rss_kib": ${M_F[lz4]}},
 "dbbackup_encrypted": {"archive_s": ${A[enc]}, "fetch_s": ${F[enc]}, "repo_bytes": $SZ_ENC, "archive_rss_kib": ${M_A[enc]}, "fetch_rss_kib": ${M_F[enc]}},
 "base_backup": {"cluster": "$DBSIZE", "pgbackrest_s": $B_PGBR, "dbbackup_s": $B_DBB, "pgbackrest_bytes": $BS_PGBR, "dbbackup_bytes": $BS_DBB, "pgbackrest_rss_kib": $BM_PGBR, "dbbackup_rss_kib": $BM_DBB},
 "restore": {"pgbackrest_s": $R_PGBR, "dbbackup_s": $R_DBB, "pgbackrest_rss_kib": $RM_PGBR, "dbbackup_rss_kib": $RM_DBB},
 "replay": {"segments": $REPLAY_SEGS, "pgbackrest_s": $P_PGBR, "dbbackup_s": $P_DBB},
 "s3": {"store": "garage $GARAGE_VERSION on loopback",
  "pgbackrest_https": {"archive_s": $A_PGBR_S3, "fetch_s": $F_PGBR_S3, "archive_rss_kib": $M_A_PGBR_S3, "fetch_rss_kib": $M_F_PGBR_S3,
    "backup_s": ${B[pgbr_s3]}, "restore_s": ${R[pgbr_s3]}, "backup_rss_kib": ${BM[pgbr_s3]}, "restore_rss_kib": ${RM[pgbr_s3]}},
  "dbbackup_http": {"archive_s": $A_S3, "fetch_s": $F_S3, "archive_rss_kib": $M_A_S3, "fetch_rss_kib": $M_F_S3,
    "backup_s": ${B[dbb_s3]}, "restore_s": ${R[dbb_s3]}, "backup_rss_kib": ${BM[dbb_s3]}, "restore_rss_kib": ${RM[dbb_s3]}},
  "dbbackup_https": {"archive_s": $A_TLS, "fetch_s": $F_TLS, "archive_rss_kib": $M_A_TLS, "fetch_rss_kib": $M_F_TLS,
    "backup_s": ${B[dbb_tls]}, "restore_s": ${R[dbb_tls]}, "backup_rss_kib": ${BM[dbb_tls]}, "restore_rss_kib": ${RM[dbb_tls]}}}}
JSON
echo "results: target/bench/results.json"

# The same figures as a Markdown page, with the machine they came from.
CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
{
  echo "# Benchmarks"
  echo
  echo "Written by \`./scripts/bench.sh\` on $(date -u +%Y-%m-%d): $(nproc) cores ($CPU), $(free -g | awk '/Mem:/ {print $2}') GiB RAM,"
  echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), $(pgbackrest version). Ratios are dbbackup's time over pgBackRest's"
  echo "in the same run on the same data (lower is better); absolute times on shared machines vary."
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
  echo
  echo "## WAL replay: $REPLAY_SEGS segments of pgbench WAL through the restore_command"
  echo
  echo "The same restored copy started twice, once with each restore_command, timed until recovery ended."
  echo
  echo "| restore_command | total s | ms per segment | ratio |"
  echo "|---|---:|---:|---:|"
  echo "| pgbackrest archive-get | $(s2 "$P_PGBR") | $PS_PGBR | 1.00 |"
  echo "| dbbackup wal fetch | $(s2 "$P_DBB") | $PS_DBB | $(ratio "$P_DBB" "$P_PGBR") |"
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
  echo "## S3: the same on Garage $GARAGE_VERSION (one node, loopback)"
  echo
  echo "Garage keeps metadata in sqlite and fsyncs data and metadata before it acknowledges a PUT (as the local"
  echo "repositories fsync what they write). pgBackRest speaks S3 over https only: stunnel terminates TLS in front"
  echo "of Garage, with a certificate from a CA made by openssl, which both tools verify. dbbackup is measured"
  echo "over plain http (accepted for a loopback endpoint) and over https through the same stunnel (the CA given"
  echo "by \`ca-file\` in its config). *ratio* is over pgBackRest on S3; *S3/local* is a tool's time on S3 over its own"
  echo "time on the local repository above."
  echo
  echo "### WAL: one 16 MiB segment (median of $RUNS runs; each archive starts with the segment's object deleted)"
  echo
  echo "| tool | archive ms | fetch ms | archive ratio | fetch ratio | S3/local archive | S3/local fetch | peak RSS archive/fetch KiB |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  echo "| pgBackRest archive-push/get (lz4, https) | $(ms "$A_PGBR_S3") | $(ms "$F_PGBR_S3") | 1.00 | 1.00 | $(ratio "$A_PGBR_S3" "$A_PGBR") | $(ratio "$F_PGBR_S3" "$F_PGBR") | $M_A_PGBR_S3 / $M_F_PGBR_S3 |"
  echo "| dbbackup (zstd, http) | $(ms "$A_S3") | $(ms "$F_S3") | $(ratio "$A_S3" "$A_PGBR_S3") | $(ratio "$F_S3" "$F_PGBR_S3") | $(ratio "$A_S3" "${A[zstd]}") | $(ratio "$F_S3" "${F[zstd]}") | $M_A_S3 / $M_F_S3 |"
  echo "| dbbackup (zstd, https) | $(ms "$A_TLS") | $(ms "$F_TLS") | $(ratio "$A_TLS" "$A_PGBR_S3") | $(ratio "$F_TLS" "$F_PGBR_S3") | $(ratio "$A_TLS" "${A[zstd]}") | $(ratio "$F_TLS" "${F[zstd]}") | $M_A_TLS / $M_F_TLS |"
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
} > docs/benchmarks.md
echo "report: docs/benchmarks.md"
