#!/usr/bin/env bash
# The main job, end to end, on a throwaway cluster and repository.
#
# Today this shows what is built so far: a repository bound to a real
# PostgreSQL cluster, an encryption key, PostgreSQL archiving every WAL
# segment through `dbbackup wal archive`, and `dbbackup wal fetch` handing a
# segment back verified. Each later feature extends it until it tells the
# whole point-in-time-recovery story.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
echo "==> building dbbackup"
cargo build -q -p dbbackup

PGBIN=${DBBACKUP_PG15_BIN:-/usr/lib/postgresql/15/bin}
WORK=$(mktemp -d /tmp/dbbackup-demo.XXXXXX)
chmod 755 "$WORK"
RUN=()
if [ "$(id -u)" = 0 ]; then
  chown postgres "$WORK"
  RUN=(runuser -u postgres --)
fi
cp target/debug/dbbackup "$WORK/dbbackup"
chmod 755 "$WORK/dbbackup"
DBB="$WORK/dbbackup"
PORT=$((20000 + RANDOM % 20000))

cleanup() {
  "${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Print a command as a DBA would type it, then run it as the postgres user.
run() {
  printf '\n$ %s\n' "$*"
  "${RUN[@]}" "$@"
}
psql_() {
  printf '\n$ psql -c "%s"\n' "$1"
  "${RUN[@]}" "$PGBIN/psql" -X -q -h "$WORK" -p "$PORT" -U postgres -d postgres -c "$1"
}

echo "==> a throwaway PostgreSQL 15 cluster in $WORK/data (port $PORT)"
"${RUN[@]}" "$PGBIN/initdb" -D "$WORK/data" -A trust -U postgres --locale=C >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
archive_mode = on
archive_command = '$DBB wal archive %p %f --repo $WORK/repo --encryption-key-file $WORK/key'
CONF
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null

echo
echo "==> 1. a key and an encrypted repository bound to this cluster"
run "$DBB" key generate --output "$WORK/key"
run "$DBB" repo init --repo "$WORK/repo" --pgdata "$WORK/data" --encrypt --encryption-key-file "$WORK/key"

echo
echo "==> 2. PostgreSQL archives every finished segment through 'dbbackup wal archive'"
psql_ "CREATE TABLE accounts(id int PRIMARY KEY, balance numeric); INSERT INTO accounts SELECT g, 100 FROM generate_series(1, 50000) g;"
psql_ "SELECT pg_walfile_name(pg_switch_wal()) AS finished_segment;"
SEG=$("${RUN[@]}" "$PGBIN/psql" -X -A -t -q -h "$WORK" -p "$PORT" -U postgres -c "INSERT INTO accounts VALUES (50001, 1); SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 100); do
  LAST=$("${RUN[@]}" "$PGBIN/psql" -X -A -t -h "$WORK" -p "$PORT" -U postgres -c "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
  [[ "$LAST" < "$SEG" ]] || break
  sleep 0.1
done
psql_ "SELECT archived_count, last_archived_wal, failed_count FROM pg_stat_archiver;"
echo
echo "\$ find $WORK/repo/wal -type f"
find "$WORK/repo/wal" -type f | sort | sed "s|$WORK/repo/||"

echo
echo "==> 3. 'dbbackup wal fetch' (the restore_command) hands a segment back, decrypted and verified"
run "$DBB" wal fetch "$SEG" "$WORK/fetched" --repo "$WORK/repo" --encryption-key-file "$WORK/key"
echo
echo "\$ cmp $WORK/fetched $WORK/data/pg_wal/$SEG"
cmp "$WORK/fetched" "$WORK/data/pg_wal/$SEG" && echo "identical: $(sha256sum "$WORK/fetched" | cut -c1-64)"

echo
echo "==> 4. a damaged object is never handed to recovery"
OBJ=$(find "$WORK/repo/wal" -name "$SEG.*")
printf '\x00' | dd of="$OBJ" bs=1 seek=200 conv=notrunc status=none
printf '\n$ %s\n' "dbbackup wal fetch $SEG ... (after flipping one byte of its object)"
set +e
"${RUN[@]}" "$DBB" wal fetch "$SEG" "$WORK/fetched2" --repo "$WORK/repo" --encryption-key-file "$WORK/key"
rc=$?
set -e
echo "exit status $rc (above 125: PostgreSQL stops recovery instead of finishing at the wrong point)"

echo
echo "==> 5. the repository"
run "$DBB" repo info --repo "$WORK/repo"
echo
echo "demo finished: everything under $WORK is removed on exit"
