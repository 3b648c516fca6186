#!/usr/bin/env bash
# The demo: a local etcd, a manager, two core nodes of one cluster on the etcd store (each with
# its own certificate) and two runners; a service run through the manager, a job surviving the
# loss of the runner running it, then a fail-over of the active core node.
# Everything runs on loopback in a temp dir and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${AUTOGATE_BIN:-target/release/autogate}
ETCD=${ETCD_BIN:-$(command -v etcd || echo /usr/bin/etcd)}
DEMO=$(mktemp -d /tmp/autogate-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$DEMO"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { # url [curl args…]
  local url=$1; shift
  for _ in $(seq 1 200); do curl -fsS "$@" "$url" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "demo: $url did not answer" >&2; return 1
}
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

ETCD_CLIENT=$(free_port); ETCD_PEER=$(free_port)
say "etcd on 127.0.0.1:$ETCD_CLIENT"
"$ETCD" --name demo --data-dir "$DEMO/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_CLIENT" --advertise-client-urls "http://127.0.0.1:$ETCD_CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER" \
  --auto-compaction-mode=revision --auto-compaction-retention=1000 >"$DEMO/etcd.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$ETCD_CLIENT/health"

say "certificates: a CA, the manager's server certificate, one key pair per core node"
"$BIN" cert-gen ca --output "$DEMO/pki"
"$BIN" cert-gen server --output "$DEMO/pki" --name manager --san 127.0.0.1 --san localhost
"$BIN" cert-gen node --output "$DEMO/pki" --name core-1
"$BIN" cert-gen node --output "$DEMO/pki" --name core-2

MGR_PORT=$(free_port)
say "manager on https://127.0.0.1:$MGR_PORT"
GATEWAY_MANAGER_PORT=$MGR_PORT GATEWAY_MANAGER_DATA_DIR="$DEMO/manager" \
GATEWAY_MANAGER_CERTIFICATE_FILE="$DEMO/pki/manager.pem" GATEWAY_MANAGER_PRIVATE_KEY_FILE="$DEMO/pki/manager-key.pem" \
HOME="$DEMO" "$BIN" manager >"$DEMO/manager.log" 2>&1 &
PIDS+=($!)
wait_http "https://127.0.0.1:$MGR_PORT/healthz" --cacert "$DEMO/pki/ca.pem"
MGR=(--url "https://127.0.0.1:$MGR_PORT" --ca "$DEMO/pki/ca.pem" --token-file "$DEMO/manager/admin.token")
"$BIN" manager cluster add cluster_1 --name "demo cluster" --state enabled \
  --cert "$DEMO/pki/core-1.pem" --cert "$DEMO/pki/core-2.pem" "${MGR[@]}"

# The operator API needs an API key: every core node bootstraps `admin` with this password
# (only the first node to start in the cluster creates the user); `login` below exchanges it.
ADMIN_PASSWORD_FILE="$DEMO/admin.password"
python3 -c 'import secrets; print(secrets.token_urlsafe(18))' >"$ADMIN_PASSWORD_FILE"
chmod 600 "$ADMIN_PASSWORD_FILE"
start_core() { # name port primary
  local name=$1 port=$2 primary=$3
  GATEWAY_SERVER_ADMIN_PASSWORD_FILE="$ADMIN_PASSWORD_FILE" GATEWAY_APPLICATION_WORKING_DIR="$DEMO/$name" GATEWAY_APPLICATION_CA_CERTIFICATE_FILE="$DEMO/pki/ca.pem" \
  GATEWAY_SERVER_PORT=$port GATEWAY_STORE_BACKEND=etcd GATEWAY_STORE_ETCD_HOSTS="127.0.0.1:$ETCD_CLIENT" \
  GATEWAY_CONNECT_HOSTS="127.0.0.1:$MGR_PORT" GATEWAY_CONNECT_SERVER_HA_ENABLED=true \
  GATEWAY_CONNECT_SERVER_HA_IS_PRIMARY=$primary GATEWAY_CONNECT_SERVER_HA_PREEMPT_DELAY=3s \
  GATEWAY_CONNECT_CERTIFICATE_FILE="$DEMO/pki/$name.pem" GATEWAY_CONNECT_PRIVATE_KEY_FILE="$DEMO/pki/$name-key.pem" \
  GATEWAY_SERVER_DISTRIBUTED_EXECUTION=true \
  GATEWAY_LOG_LEVEL=DEBUG HOME="$DEMO" "$BIN" server \
    > >(tee -a "$DEMO/$name.log" | sed -u "s/^/$(label "$name") | /" >>"$DEMO/both.log") 2>&1 &
  echo $! >"$DEMO/$name.pid"
  PIDS+=($!)
  wait_http "http://127.0.0.1:$port/api/v1/health"
}
label() { if [ "$1" = core-1 ]; then echo "active-gateway "; else echo "standby-gateway"; fi; }
wait_log() { # file pattern
  for _ in $(seq 1 400); do grep -q "$2" "$1" && return 0; sleep 0.05; done
  echo "demo: '$2' not seen in $1" >&2; return 1
}
P1=$(free_port); P2=$(free_port)
say "core-1 (primary) on 127.0.0.1:$P1 and core-2 on 127.0.0.1:$P2, HA on, etcd store"
start_core core-1 "$P1" true
wait_log "$DEMO/core-1.log" "connected to commander at"
start_core core-2 "$P2" false
wait_log "$DEMO/core-2.log" "is not the active node"

say "log in as admin (POST /api/v1/login on core-2, forwarded to the active node)"
API_KEY=$(python3 - "$P2" "$ADMIN_PASSWORD_FILE" <<'PY'
import json, sys, urllib.request
port, pwfile = sys.argv[1], sys.argv[2]
body = json.dumps({"username": "admin", "password": open(pwfile).read().strip()}).encode()
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/login", data=body,
                             headers={"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(req))["api_key"])
PY
)
echo "logged in; the key expires after server.api_key_expiration"

say "autogate ha status (asked of core-2)"
GATEWAY_APPLICATION_MODE=client GATEWAY_CLIENT_API_KEY=$API_KEY GATEWAY_CLIENT_PORT=$P2 HOME="$DEMO" "$BIN" ha status
say "the manager shows the cluster as one gateway with its nodes"
for _ in $(seq 1 100); do
  "$BIN" manager cluster show cluster_1 "${MGR[@]}" --raw | python3 -c 'import json,sys; sys.exit(0 if len(json.load(sys.stdin)["nodes"]) == 2 else 1)' && break
  sleep 0.05
done
"$BIN" manager cluster show cluster_1 "${MGR[@]}"

start_runner() { # name
  GATEWAY_APPLICATION_WORKING_DIR="$DEMO/$1" GATEWAY_STORE_BACKEND=etcd GATEWAY_STORE_ETCD_HOSTS="127.0.0.1:$ETCD_CLIENT" \
  GATEWAY_RUNNER_LEASE_TTL=3s GATEWAY_RUNNER_CAPACITY=2 HOME="$DEMO" "$BIN" runner >"$DEMO/$1.log" 2>&1 &
  echo $! >"$DEMO/$1.pid"
  PIDS+=($!)
}
say "two runners join the cluster (no port: they work through etcd)"
start_runner runner-1
start_runner runner-2
cli() { GATEWAY_APPLICATION_MODE=client GATEWAY_CLIENT_PORT=$P2 GATEWAY_CLIENT_API_KEY=$API_KEY HOME="$DEMO" "$BIN" "$@"; }
for _ in $(seq 1 100); do [ "$(cli get runners --raw | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["runners"]))')" = 2 ] && break; sleep 0.05; done
cli get runners

say "a service, created through core-2 (forwarded to the active node), run through the manager on a runner"
cli create executable-object sh --exec-command /bin/sh
cli create service executable hello --executable-object sh '--arg-format=-c {{.Value}}' --retries 1 \
  --description "says where it ran"
for _ in $(seq 1 100); do "$BIN" manager cluster services cluster_1 "${MGR[@]}" --raw | grep -q '"hello"' && break; sleep 0.05; done
"$BIN" manager service run cluster_1 hello --set 'cmd=echo hello from pid $$' "${MGR[@]}"

say "a job survives the loss of the runner running it (kill -9, the service allows one retry)"
"$BIN" manager service run cluster_1 hello --set 'cmd=sleep 4; echo survived' "${MGR[@]}" >"$DEMO/survivor.out" 2>&1 &
RUN_PID=$!
VICTIM=""
for _ in $(seq 1 200); do
  VICTIM=$(cli inspect cluster activity --raw | python3 -c '
import json, sys
jobs = [j for j in json.load(sys.stdin)["jobs"] if j["completed"] is None and j["node"]]
print(jobs[0]["node"] if jobs else "")')
  [ -n "$VICTIM" ] && break; sleep 0.05
done
for r in runner-1 runner-2; do
  if grep -q "$VICTIM" <(cli get runners --raw) && grep -q "runner starting" "$DEMO/$r.log" && grep -q "$VICTIM" "$DEMO/$r.log"; then
    echo "kill -9 $r ($VICTIM), which is running the job"
    kill -9 "$(cat "$DEMO/$r.pid")"; wait "$(cat "$DEMO/$r.pid")" 2>/dev/null || true
  fi
done
wait "$RUN_PID" || true
cat "$DEMO/survivor.out"
cli inspect cluster activity

say "stopping the active node (SIGTERM to core-1)"
: >"$DEMO/core-2.mark"
kill -TERM "$(cat "$DEMO/core-1.pid")"
wait_log "$DEMO/core-2.log" "elected as the leader"
for _ in $(seq 1 100); do [ "$(grep -c 'connected to commander at' "$DEMO/core-2.log")" -ge 1 ] && break; sleep 0.05; done
sleep 0.3

say "fail-over, as in the HA guide (active-gateway = core-1, standby-gateway = core-2)"
grep -E 'connected to commander|is not the active node|got signal for shutdown|received shutdown signal|is elected as the leader|creating connection to commander|attempting to connect to wss' \
  "$DEMO/both.log" | cut -c1-220

say "the manager's session history (its own clock, milliseconds)"
"$BIN" manager cluster sessions cluster_1 "${MGR[@]}"
"$BIN" manager cluster sessions cluster_1 "${MGR[@]}" --raw | python3 -c '
import json, sys
from datetime import datetime
s = json.load(sys.stdin)
s = s["sessions"] if isinstance(s, dict) else s
new, old = s[0], s[1]
t = lambda x: datetime.fromisoformat(x.replace("Z", "+00:00"))
gap = (t(new["connected_at"]) - t(old["disconnected_at"])).total_seconds() * 1000
terms = (old["term"], new["term"])
print("fail-over at the manager: old session closed -> new session connected in %.1f ms (term %s -> %s)" % (gap, *terms))
'

say "core-1 (the primary) comes back: after its preemption delay (3 s) it takes the role back"
start_core core-1 "$P1" true
for _ in $(seq 1 200); do [ "$(grep -c 'connected to commander at' "$DEMO/core-1.log")" -ge 2 ] && break; sleep 0.05; done
"$BIN" manager cluster sessions cluster_1 "${MGR[@]}"
say "done; stopping everything"
