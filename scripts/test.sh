#!/usr/bin/env bash
# The whole test suite against local PostgreSQL and RabbitMQ. Extra arguments go to the runner.
#
# Two phases over one build: first every test but the fault-injection ones, in parallel; then
# the fault-injection tests (gateway/tests/faults.rs), one at a time, since they stop and start
# the services the others share. Last, the benchmark's smoke run.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCANHOOK_ROOT"

command -v cargo >/dev/null || die "cargo not found; install Rust with rustup first"
ensure_postgres
ensure_rabbitmq

# The tests get their own URLs; settings meant for the binaries must not leak into them.
unset SCANHOOK__DATABASE__URL SCANHOOK__AMQP__URL SCANHOOK__WEBHOOK__SECRET SCANHOOK__GATEWAY__LISTEN

# How the fault-injection tests act on the services (they run on this machine, as root).
root=""
((EUID == 0)) || root="sudo "
pg_version=${SCANHOOK_PG_CLUSTER%/*} pg_name=${SCANHOOK_PG_CLUSTER#*/}
export SCANHOOK_TEST_RABBITMQCTL="${root}rabbitmqctl"
export SCANHOOK_TEST_BROKER_STOP="${root}rabbitmqctl -q stop_app"
export SCANHOOK_TEST_BROKER_START="${root}rabbitmqctl -q start_app && ${root}rabbitmqctl -q await_startup"
export SCANHOOK_TEST_DATABASE_STOP="${root}pg_ctlcluster $pg_version $pg_name stop -m fast"
export SCANHOOK_TEST_DATABASE_START="${root}pg_ctlcluster $pg_version $pg_name start"

if cargo nextest --version >/dev/null 2>&1; then
  log "cargo nextest run --workspace --locked (parallel tests) $*"
  cargo nextest run --workspace --locked -E 'not binary(faults)' "$@"
  log "cargo nextest run (fault-injection tests, one at a time) $*"
  cargo nextest run --workspace --locked -E 'binary(faults)' --test-threads 1 --no-capture "$@"
else
  log "cargo-nextest is not installed; running cargo test --workspace --locked $*"
  cargo test --workspace --locked "$@" -- --skip faults::
  cargo test --locked -p scanhook-gateway --test faults "$@" -- --test-threads 1 --nocapture
fi

# The benchmark for seconds per row on the debug binaries just built, so that it cannot rot;
# it fails when a row gives no figure (see Benchmark in README.md).
log "benchmark smoke run: scripts/bench.sh --smoke"
bash scripts/bench.sh --smoke
