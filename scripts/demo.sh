#!/usr/bin/env bash
# The main job, end to end, on a throwaway cluster and repository:
# archiving on, a base backup, writes, an accidental DROP TABLE, a
# search of the archive for the transaction that dropped it, and a
# point-in-time restore to just before it that brings the table back.
# Every dbbackup command is printed as a DBA would type it.
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
install -m 755 target/debug/dbbackup "$WORK/dbbackup"
PORT=$((20000 + RANDOM % 20000))
PORT2=$((PORT + 1))
export PATH="$WORK:$PATH"

cleanup() {
  "${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/restored" -m immediate stop >/dev/null 2>&1 || true
  "${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n==> %s\n' "$*"; }
# Prints a command as typed, then runs it as the postgres user.
run() {
  local shown=() a
  for a in "$@"; do
    if [[ "$a" =~ [[:space:]] ]]; then shown+=("'$a'"); else shown+=("$a"); fi
  done
  printf '\n$ %s\n' "${shown[*]}"
  "${RUN[@]}" env PATH="$PATH" "$@"
}
sql() { # sql PORT QUERY: print and run
  printf '\n$ psql -p %s -c "%s"\n' "$1" "$2"
  "${RUN[@]}" "$PGBIN/psql" -X -q -h "$WORK" -p "$1" -U postgres -d postgres -c "$2"
}
val() { "${RUN[@]}" "$PGBIN/psql" -X -A -t -q -h "$WORK" -p "$1" -U postgres -d postgres -c "$2"; }

say "a throwaway PostgreSQL 15 cluster ($WORK/data, port $PORT) and repository ($WORK/repo)"
"${RUN[@]}" "$PGBIN/initdb" -D "$WORK/data" -A trust -U postgres --locale=C >/dev/null
cat >>"$WORK/data/postgresql.conf" <<CONF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
CONF
"${RUN[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w start >/dev/null
export PGHOST="$WORK" PGPORT="$PORT" PGUSER=postgres DBBACKUP_REPO="$WORK/repo"
echo "(PGHOST, PGPORT and DBBACKUP_REPO are set, as in a DBA's shell)"

say "1. turn archiving on (creates the repository, restarts PostgreSQL, proves a segment arrives)"
run dbbackup pitr enable --restart

say "2. some business, then a nightly base backup"
sql "$PORT" "CREATE TABLE accounts(id int PRIMARY KEY, owner text, balance numeric); INSERT INTO accounts SELECT g, 'customer ' || g, 100 FROM generate_series(1, 10000) g;"
run dbbackup backup base --fast
run dbbackup backup list

say "3. more business after the backup"
sql "$PORT" "UPDATE accounts SET balance = balance + 50 WHERE id <= 5000;"
sql "$PORT" "INSERT INTO accounts SELECT g, 'customer ' || g, 10 FROM generate_series(10001, 12000) g;"
say "4. the accident"
sql "$PORT" "DROP TABLE accounts;"

say "5. make sure the WAL up to now is archived, and check PITR health"
printf '\n$ psql -p %s -c "SELECT pg_switch_wal();"   # and wait until pg_stat_archiver shows it archived\n' "$PORT"
SEG=$(val "$PORT" "SELECT pg_walfile_name(pg_switch_wal())")
for _ in $(seq 1 100); do
  [[ "$(val "$PORT" "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")" < "$SEG" ]] || break
  sleep 0.1
done
run dbbackup pitr status

say "6. when exactly did it happen? ask the archive (no need to have noted the time)"
run dbbackup wal search --table accounts

say "7. restore a copy to just before that transaction, start it and follow recovery"
run dbbackup restore pitr --before-accident accounts --target-dir "$WORK/restored" \
  --archive-mode off --auto-start --port "$PORT2" --monitor

say "8. the table is back, with every row and the update made after the backup"
sql "$PORT2" "SELECT count(*) AS accounts, sum(balance) AS total_balance FROM accounts;"
ROWS=$(val "$PORT2" "SELECT count(*) FROM accounts")
TOTAL=$(val "$PORT2" "SELECT sum(balance) FROM accounts")
if [ "$ROWS" = 12000 ] && [ "$TOTAL" = 1270000 ]; then
  echo "OK: 12000 accounts, total balance 1270000, as just before the DROP TABLE"
else
  echo "UNEXPECTED: $ROWS rows, total $TOTAL (expected 12000 and 1270000)" >&2
  exit 1
fi
echo
echo "demo finished: the clusters and the repository under $WORK are removed on exit"
