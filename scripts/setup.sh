#!/usr/bin/env bash
# Brings a fresh machine to the point where kvmesh builds and runs: Debian packages, npm
# packages, the native kernel module. Every step checks first, so a second run costs ~1 s.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[setup] %s\n' "$*" >&2; }

# 1. Debian packages (binary or header each one provides).
need=()
command -v nats-server >/dev/null 2>&1 || need+=(nats-server)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
[ -e /usr/include/xxhash.h ] || need+=(libxxhash-dev)
{ [ -e /usr/include/x86_64-linux-gnu/cblas.h ] || [ -e /usr/include/cblas.h ] || ls /usr/include/*/openblas*/cblas.h >/dev/null 2>&1; } || need+=(libopenblas-dev)
command -v g++ >/dev/null 2>&1 || need+=(g++)
command -v make >/dev/null 2>&1 || need+=(make)
if [ ${#need[@]} -gt 0 ]; then
  log "installing Debian packages: ${need[*]}"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  if [ -n "$sudo" ] && ! command -v sudo >/dev/null 2>&1; then
    log "not root and no sudo: install these yourself: apt-get install ${need[*]}"
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 2. npm packages: install when node_modules is missing or older than the lockfile.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "installing npm packages"
  # NOTE: `npm install`, not `npm ci`: the registry mirror here lacks some other-platform optional
  # packages (e.g. @bufbuild/buf-darwin-*), which npm ci treats as a lockfile mismatch.
  npm install --no-audit --no-fund --loglevel=error
fi

# 3. Native kernels (rebuilds only when a source is newer than the module).
node kernels/scripts/build.mjs
