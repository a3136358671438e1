#!/usr/bin/env bash
# The whole test suite against local PostgreSQL and RabbitMQ. Extra arguments go to the runner.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCANHOOK_ROOT"

command -v cargo >/dev/null || die "cargo not found; install Rust with rustup first"
ensure_postgres
ensure_rabbitmq
# Tests build their settings from SCANHOOK_TEST_*; the development values must not leak in.
unset SCANHOOK__DATABASE__URL SCANHOOK__AMQP__URL SCANHOOK__WEBHOOK__SECRET SCANHOOK__GATEWAY__LISTEN

if cargo nextest --version >/dev/null 2>&1; then
  log "running cargo nextest run --workspace --locked $*"
  exec cargo nextest run --workspace --locked "$@"
else
  log "cargo-nextest is not installed; running cargo test --workspace --locked $*"
  exec cargo test --workspace --locked "$@"
fi
