# autogate — the two commands that matter are `make demo` and `make test`.
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all deps build release test test-setup lint fmt demo bench bench-startup bench-failover bench-manager bench-replicas bench-services bench-dispatch bench-badinput soak docs clean

all: build

deps:
	@bash scripts/deps.sh

build: deps
	$(CARGO) build --workspace --all-targets

release: deps
	$(CARGO) build --release -p autogate

## Every test: unit, store conformance against a real etcd (plain, TLS, mutual TLS), black-box
## tests of the real binary.
test: deps
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace --no-fail-fast

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) deny --log-level error check bans licenses sources

## A clean clone of the committed tree builds with Debian's protoc and protobuf includes hidden:
## the build needs nothing but the Rust toolchain (needs root or user namespaces).
test-setup:
	bash scripts/test-fresh-build.sh

fmt:
	$(CARGO) fmt --all

## Local etcd, manager, two HA core nodes and two runners: a service run through the manager, a job
## surviving the loss of its runner, a fail-over and the primary's return; then stops everything.
demo: deps release
	bash scripts/demo.sh

## Benchmarks (reported, never asserted): start-up, idle memory, store throughput vs raw etcd,
## fail-over.
bench: bench-startup bench-failover bench-manager bench-replicas bench-services bench-dispatch

## BASELINE=path/to/an/earlier/release/autogate adds its start-up rows, measured alternately.
bench-startup: deps release
	$(CARGO) build --release -p autogate-bench
	AUTOGATE_BASELINE_BIN="$(BASELINE)" ./target/release/autogate-bench foundation

## Fail-over: graceful and kill -9 hand-overs of a real two-node cluster, seen by the manager,
## against `etcdctl elect` on the same etcd (about 90 s).
bench-failover: deps release
	$(CARGO) build --release -p autogate-bench
	./target/release/autogate-bench failover

bench-manager: deps release
	$(CARGO) build --release -p autogate-bench
	./target/release/autogate-bench manager

## Manager replicas: one manager on its local store, one and three replicas on a 3-member etcd —
## registrations, session accept rate, runs/s through the holding replica and through another,
## kill -9 → new session, RSS per replica (REPLICAS_RUNS runs, default 3; about 10 min).
bench-replicas: deps release
	$(CARGO) build --release -p autogate-bench
	./target/release/autogate-bench replicas

## Service runs through the API vs the bare command; python cold vs warm venv (about 1 min).
bench-services: deps release
	$(CARGO) build --release -p autogate-bench
	./target/release/autogate-bench services

## Distributed execution: no-op jobs through manager, active node and runner (1 and 2 runners),
## against a core node running them itself and the raw etcd put rate.
bench-dispatch: deps release
	$(CARGO) build --release -p autogate-bench
	./target/release/autogate-bench dispatch

## Bad input: every route of a core node and of the manager fed malformed and hostile requests
## (three seeds, 1 MiB values, 40 MiB bodies); fails on any 5xx, unanswered request or crash.
bench-badinput: deps release
	$(CARGO) build --release -p autogate-bench
	./target/release/autogate-bench badinput

## Chaos soak: callers through the manager while the active node is stopped, killed and
## frozen, runners killed and the manager restarted, in both execution modes, then against three
## manager replicas on a shared etcd, the session's replica and another one killed (SOAK_FAULTS
## per mode, default 100; SOAK_SEED; SOAK_MODE=local|distributed|replicas for one); fails when a
## run was lost, doubled or misreported, or a replica crashed.
soak: deps release
	$(CARGO) build --release -p autogate-bench
	./target/release/autogate-bench soak

docs:
	UPDATE_DOCS=1 $(CARGO) test -p autogate-config --quiet docs

clean:
	$(CARGO) clean
