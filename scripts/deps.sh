#!/usr/bin/env bash
# Install what building, testing and the demo need, only when it is missing (idempotent; one
# line when everything is there). Debian packages: etcd (server and etcdctl), git, the OpenSSH
# client and server (SSH repositories, host key scans, the sshd test fixture), tinyproxy (the
# manager link through an HTTP proxy) and python3-venv for service execution, ansible for ansible-playbook services, chromium and its
# WebDriver for the manager page's browser test; cargo-deny from crates.io for `make lint`. The
# build itself needs only the Rust toolchain: protoc and its includes come from the
# protoc-bin-vendored crate (see .cargo/config.toml).
set -euo pipefail

need=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

have_cmd etcd || [ -x /usr/bin/etcd ] || need+=(etcd-server)
have_cmd etcdctl || need+=(etcd-client)
have_cmd git || need+=(git)
# ssh and ssh-keyscan for SSH repositories and `autogate hostkeys scan`; sshd (not on PATH for
# non-root users, hence the path too) for the tests that check out from a real SSH server.
have_cmd ssh-keyscan || need+=(openssh-client)
have_cmd sshd || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || have_pkg python3-venv || need+=(python3-venv)
have_cmd curl || need+=(curl)
have_cmd ansible-playbook || need+=(ansible)
# tinyproxy (not on PATH for non-root users, hence the paths too) for the tests of the manager link
# through an HTTP CONNECT proxy.
have_cmd tinyproxy || [ -x /usr/sbin/tinyproxy ] || [ -x /usr/bin/tinyproxy ] || need+=(tinyproxy)
have_cmd chromium || need+=(chromium)
have_cmd chromedriver || need+=(chromium-driver)

installed=0
if [ ${#need[@]} -gt 0 ]; then
  installed=1
  echo "deps: installing ${need[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # The tests start sshd themselves, on a port of their own; the package also enables and
  # starts a system-wide ssh service on port 22, which this machine did not ask for: undone.
  if [[ " ${need[*]} " == *" openssh-server "* ]]; then
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now ssh.service ssh.socket >/dev/null 2>&1 || true
    else
      $SUDO service ssh stop >/dev/null 2>&1 || true
    fi
    echo "deps: openssh-server installed for the tests; its system ssh service is left stopped"
  fi
  # Likewise tinyproxy: the tests run their own on ports of their own; the package's system
  # service on port 8888 is undone.
  if [[ " ${need[*]} " == *" tinyproxy "* ]]; then
    if [ -d /run/systemd/system ]; then
      $SUDO systemctl disable --now tinyproxy.service >/dev/null 2>&1 || true
    else
      $SUDO service tinyproxy stop >/dev/null 2>&1 || true
    fi
    echo "deps: tinyproxy installed for the tests; its system service is left stopped"
  fi
fi

if ! have_cmd cargo; then
  echo "deps: cargo not found; install the Rust toolchain (rustup) first" >&2
  exit 1
fi

# cargo-deny for `make lint`'s dependency policy (deny.toml); built from crates.io, pinned.
CARGO_DENY_VERSION=0.20.2
if ! cargo deny --version 2>/dev/null | grep -qx "cargo-deny $CARGO_DENY_VERSION"; then
  installed=1
  echo "deps: installing cargo-deny $CARGO_DENY_VERSION (a few minutes, once)"
  cargo install --locked --quiet "cargo-deny@$CARGO_DENY_VERSION"
fi

if [ "$installed" -eq 0 ]; then
  echo "deps: all dependencies present"
fi
