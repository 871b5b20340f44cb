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
#
# Not a test: it never fails on slowness. Results: target/bench/results.json.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release -q -p dbbackup

RUNS=${BENCH_RUNS:-15}
SEGMENTS=${BENCH_SEGMENTS:-8}
PGBIN=${DBBACKUP_PG15_BIN:-/usr/lib/postgresql/15/bin}
WORK=$(mktemp -d /tmp/dbbackup-bench.XXXXXX)
chmod 755 "$WORK"
RUN=()
if [ "$(id -u)" = 0 ]; then chown postgres "$WORK"; RUN=(runuser -u postgres --); fi
as() { "${RUN[@]}" "$@"; }
cp target/release/dbbackup "$WORK/dbbackup"; chmod 755 "$WORK/dbbackup"
DBB="$WORK/dbbackup"
PORT=$((20000 + RANDOM % 20000))
cleanup() { as "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT

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

echo "==> pgBackRest stanza"
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
as "$DBB" repo init --repo "$WORK/repo-zstd" --pgdata "$WORK/data" >/dev/null
as "$DBB" repo init --repo "$WORK/repo-lz4" --pgdata "$WORK/data" --compress lz4 >/dev/null
as "$DBB" key generate --output "$WORK/key" 2>/dev/null
as "$DBB" repo init --repo "$WORK/repo-enc" --pgdata "$WORK/data" --encrypt --encryption-key-file "$WORK/key" >/dev/null

echo "==> repository size for ${#SEGS[@]} segments"
for s in "${SEGS[@]}"; do
  as "${PGBR[@]}" archive-push "$WORK/segs/$s"
  as "$DBB" wal archive "$WORK/segs/$s" --repo "$WORK/repo-zstd"
  as "$DBB" wal archive "$WORK/segs/$s" --repo "$WORK/repo-lz4"
  as "$DBB" wal archive "$WORK/segs/$s" --repo "$WORK/repo-enc" --encryption-key-file "$WORK/key"
done
size() { find "$1" -type f \( -name '0000*' \) -printf '%s\n' | awk '{s+=$1} END {print s+0}'; }
SZ_PGBR=$(size "$WORK/pgbr/archive")
SZ_ZSTD=$(size "$WORK/repo-zstd/wal"); SZ_LZ4=$(size "$WORK/repo-lz4/wal"); SZ_ENC=$(size "$WORK/repo-enc/wal")

median() { # command...; prints median seconds over RUNS runs, preparing each with $PREP
  local times=()
  for _ in $(seq 1 "$RUNS"); do
    eval "$PREP"
    local t0 t1
    t0=$(date +%s.%N); "$@" >/dev/null 2>&1; t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'
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

echo "==> fetch latency (median of $RUNS)"
PREP="rm -f $WORK/out"
F_PGBR=$(median as "${PGBR[@]}" archive-get "$SEG" "$WORK/out"); M_F_PGBR=$(rss "${PGBR[@]}" archive-get "$SEG" "$WORK/out")
declare -A F M_F
for v in zstd lz4 enc; do
  extra=(); [ $v = enc ] && extra=(--encryption-key-file "$WORK/key")
  F[$v]=$(median as "$DBB" wal fetch "$SEG" "$WORK/out" --repo "$WORK/repo-$v" "${extra[@]}")
  M_F[$v]=$(rss "$DBB" wal fetch "$SEG" "$WORK/out" --repo "$WORK/repo-$v" "${extra[@]}")
done

echo "==> base backup and restore of a pgbench cluster (scale ${BENCH_SCALE:=100}), 2 jobs each"
as "$PGBIN/pgbench" -q -i -s "$BENCH_SCALE" -h "$WORK" -p "$PORT" -U postgres postgres >/dev/null 2>&1
DBSIZE=$("${PSQL[@]}" -c "SELECT pg_size_pretty(sum(pg_database_size(datname))) FROM pg_database")
echo "    cluster size $DBSIZE"
# Both tools need archiving into their repository for their backups to complete.
"${PSQL[@]}" -c "ALTER SYSTEM SET archive_mode = on" -c "ALTER SYSTEM SET archive_command = '$DBB wal archive %p %f --repo $WORK/repo-zstd && pgbackrest --config=$WORK/pgbackrest.conf --stanza=bench archive-push %p'"
as "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w restart >/dev/null
timed() { # prints "seconds peak_kib" of one run
  local t0 t1 rssf
  rssf=$(mktemp); chmod 666 "$rssf"
  sync # the previous run's dirty pages are not this run's cost
  t0=$(date +%s.%N)
  "${RUN[@]}" /usr/bin/time -o "$rssf" -f '%M' "$@" >/dev/null 2>&1
  t1=$(date +%s.%N)
  echo "$(echo "$t1 - $t0" | bc -l) $(tail -n1 "$rssf")"; rm -f "$rssf"
}
med3() { printf '%s\n' "$@" | sort -g | sed -n 2p; }
max3() { printf '%s\n' "$@" | sort -g | tail -n1; }
fresh_dir() { rm -rf "$1"; mkdir -p "$1"; chown postgres "$1" 2>/dev/null || true; chmod 700 "$1"; }
# Three rounds, the tools alternating, medians: one slow moment of a shared
# machine does not decide the ratio.
BT_PGBR=(); BT_DBB=(); BR_PGBR=(); BR_DBB=(); BMS_PGBR=(); BMS_DBB=(); RMS_PGBR=(); RMS_DBB=()
# Each restore starts from the same state: the other tool's restored copy
# removed (its page cache freed), dirty pages synced, and (as root) the page
# cache dropped; the tools take turns going first.
restore_pgbr() {
  fresh_dir "$WORK/r1"; rm -rf "$WORK/r2"; settle
  read -r t m < <(timed "${PGBR[@]}" --process-max=2 --pg1-path="$WORK/r1" --type=immediate restore); BR_PGBR+=("$t"); RMS_PGBR+=("$m")
}
restore_dbb() {
  fresh_dir "$WORK/r2"; rm -rf "$WORK/r1"; settle
  read -r t m < <(timed "$DBB" restore pitr --repo "$WORK/repo-zstd" --base-backup latest --target-immediate --jobs 2 --target-dir "$WORK/r2" --force); BR_DBB+=("$t"); RMS_DBB+=("$m")
}
settle() { sync; if [ "$(id -u)" = 0 ]; then echo 1 >/proc/sys/vm/drop_caches 2>/dev/null || true; fi; }
for round in 1 2 3; do
  settle
  read -r t m < <(timed "${PGBR[@]}" --type=full --process-max=2 --start-fast backup); BT_PGBR+=("$t"); BMS_PGBR+=("$m")
  settle
  read -r t m < <(timed "$DBB" backup base --fast --jobs 2 --repo "$WORK/repo-zstd" --host "$WORK" --port "$PORT" --user postgres); BT_DBB+=("$t"); BMS_DBB+=("$m")
  if [ "$round" = 1 ]; then
    BS_PGBR=$(du -sb "$WORK/pgbr/backup" | cut -f1)
    BS_DBB=$(du -sb "$WORK/repo-zstd/backups" | cut -f1)
  fi
  if [ "$round" = 2 ]; then restore_dbb; restore_pgbr; else restore_pgbr; restore_dbb; fi
done
rm -rf "$WORK/r1" "$WORK/r2"
B_PGBR=$(med3 "${BT_PGBR[@]}"); B_DBB=$(med3 "${BT_DBB[@]}"); R_PGBR=$(med3 "${BR_PGBR[@]}"); R_DBB=$(med3 "${BR_DBB[@]}")
BM_PGBR=$(max3 "${BMS_PGBR[@]}"); BM_DBB=$(max3 "${BMS_DBB[@]}"); RM_PGBR=$(max3 "${RMS_PGBR[@]}"); RM_DBB=$(max3 "${RMS_DBB[@]}")

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
  echo "$t1 - $t0" | bc -l
}
settle; P_PGBR=$(replay "$WORK/rp2"); settle; P_DBB=$(replay "$WORK/rp")
as "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null

ratio() { echo "scale=2; $1 / $2" | bc -l; }
ms() { echo "scale=1; $1 * 1000 / 1" | bc -l; }
s2() { printf '%.2f' "$1"; }
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
echo
echo "ratio = dbbackup time / pgBackRest time (archive/fetch, backup/restore); goals: archive <= 0.4, fetch <= 0.4,"
echo "backup and restore <= 0.6, repository no larger than pgBackRest lz4, peak RSS <= 32768 KiB (archive/fetch)"
echo "and <= 262144 KiB (backup/restore). pgBackRest's RSS is its main process (it forks workers)."
mkdir -p target/bench
cat > target/bench/results.json <<JSON
{"segments": ${#SEGS[@]}, "runs": $RUNS,
 "pgbackrest": {"archive_s": $A_PGBR, "fetch_s": $F_PGBR, "repo_bytes": $SZ_PGBR, "archive_rss_kib": $M_A_PGBR, "fetch_rss_kib": $M_F_PGBR},
 "dbbackup_zstd": {"archive_s": ${A[zstd]}, "fetch_s": ${F[zstd]}, "repo_bytes": $SZ_ZSTD, "archive_rss_kib": ${M_A[zstd]}, "fetch_rss_kib": ${M_F[zstd]}},
 "dbbackup_lz4": {"archive_s": ${A[lz4]}, "fetch_s": ${F[lz4]}, "repo_bytes": $SZ_LZ4, "archive_rss_kib": ${M_A[lz4]}, "fetch_rss_kib": ${M_F[lz4]}},
 "dbbackup_encrypted": {"archive_s": ${A[enc]}, "fetch_s": ${F[enc]}, "repo_bytes": $SZ_ENC, "archive_rss_kib": ${M_A[enc]}, "fetch_rss_kib": ${M_F[enc]}},
 "base_backup": {"cluster": "$DBSIZE", "pgbackrest_s": $B_PGBR, "dbbackup_s": $B_DBB, "pgbackrest_bytes": $BS_PGBR, "dbbackup_bytes": $BS_DBB, "pgbackrest_rss_kib": $BM_PGBR, "dbbackup_rss_kib": $BM_DBB},
 "restore": {"pgbackrest_s": $R_PGBR, "dbbackup_s": $R_DBB, "pgbackrest_rss_kib": $RM_PGBR, "dbbackup_rss_kib": $RM_DBB},
 "replay": {"segments": $REPLAY_SEGS, "pgbackrest_s": $P_PGBR, "dbbackup_s": $P_DBB}}
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
  echo "Median of 3 rounds, the tools taking turns; before each run the other tool's restored copy is removed,"
  echo "dirty pages synced and (as root) the page cache dropped. Peak RSS is the largest of the 3."
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
} > docs/benchmarks.md
echo "report: docs/benchmarks.md"
