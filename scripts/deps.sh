#!/usr/bin/env bash
# Install what building, testing and the demo need, only when it is missing (idempotent, quiet
# when everything is there). Debian packages: etcd (server and etcdctl), protoc for etcd-client's
# build script, git and python3-venv for service execution, ansible for ansible-playbook
# services, chromium and its WebDriver for the manager page's browser test.
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_cmd etcd || [ -x /usr/bin/etcd ] || need+=(etcd-server)
have_cmd etcdctl || need+=(etcd-client)
have_cmd protoc || need+=(protobuf-compiler)
have_cmd git || need+=(git)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || have_pkg python3-venv || need+=(python3-venv)
have_cmd curl || need+=(curl)
have_cmd ansible-playbook || need+=(ansible)
have_cmd chromium || need+=(chromium)
have_cmd chromedriver || need+=(chromium-driver)

if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! have_cmd cargo; then
  echo "deps: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi
