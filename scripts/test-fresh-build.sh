#!/usr/bin/env bash
# Proves that building needs nothing but the Rust toolchain: a clean clone of the committed tree
# builds etcd-client (the one crate that compiles .proto files) with protoc and Debian's
# google/protobuf includes hidden. Hiding uses a private mount namespace (root, or a user
# namespace): a tmpfs over every include/google directory and /dev/null bound over every protoc
# on PATH. The registry (CARGO_HOME) is shared, the target directory is not.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

git clone --quiet "$root" "$work/src"
export WORK="$work"
unset PROTOC PROTOC_INCLUDE

unshare_args=(--mount)
if [ "$(id -u)" -ne 0 ]; then unshare_args+=(--map-root-user); fi

unshare "${unshare_args[@]}" bash -euo pipefail -c '
  mount --make-rprivate /
  hidden=0
  for dir in /usr/include/google /usr/local/include/google; do
    if [ -d "$dir" ]; then mount -t tmpfs -o ro tmpfs "$dir"; hidden=$((hidden + 1)); fi
  done
  IFS=: read -r -a path_dirs <<<"$PATH"
  for dir in "${path_dirs[@]}"; do
    if [ -e "$dir/protoc" ] && [ ! -c "$dir/protoc" ]; then
      mount --bind /dev/null "$dir/protoc"; hidden=$((hidden + 1))
    fi
  done
  # The hiding itself is checked, so the build below cannot pass by finding them.
  if protoc --version >/dev/null 2>&1; then echo "fresh build: protoc still runs" >&2; exit 1; fi
  for dir in /usr/include /usr/local/include; do
    if [ -e "$dir/google/protobuf/descriptor.proto" ]; then
      echo "fresh build: $dir/google/protobuf is still visible" >&2; exit 1
    fi
  done
  echo "fresh build: $hidden system protobuf path(s) hidden; building etcd-client from a clean clone"
  cd "$WORK/src"
  CARGO_TARGET_DIR="$WORK/target" cargo build --locked --quiet -p autogate-store
  echo "fresh build: ok"
'
