#!/usr/bin/env bash
# Stops the gateway and worker started by up.sh; PostgreSQL and RabbitMQ keep running.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stop_background gateway
stop_background worker
