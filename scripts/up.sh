#!/usr/bin/env bash
# Local development in one command: services, build, schema, demo data, gateway and worker.
set -euo pipefail
SCANHOOK_RABBITMQ_MANAGEMENT="${SCANHOOK_RABBITMQ_MANAGEMENT:-1}"
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCANHOOK_ROOT"

command -v cargo >/dev/null || die "cargo not found; install Rust with rustup first"
for tool in curl openssl; do
  command -v "$tool" >/dev/null || apt_install "$tool"
done
ensure_postgres
ensure_rabbitmq

log "building release binaries"
cargo build --release --locked
bin="$SCANHOOK_ROOT/target/release"

stop_background gateway
stop_background worker

log "applying migrations"
"$bin/scanhook-migrate" up
psql -X -q -v ON_ERROR_STOP=1 -d "$SCANHOOK__DATABASE__URL" -c \
  "INSERT INTO cases (case_number, patient_id) VALUES ('CASE-2025-0001', '605914') ON CONFLICT (case_number) DO NOTHING;"

start_background gateway "$bin/scanhook-gateway"
start_background worker "$bin/scanhook-worker"

# The listen address may be a wildcard; clients reach it through loopback.
listen=$SCANHOOK__GATEWAY__LISTEN
port=${listen##*:}
host=${listen%:*}
case $host in 0.0.0.0 | "[::]") host=127.0.0.1 ;; esac
url="http://$host:$port"

tries=0
# Any HTTP answer will do; a proxy must not answer in the gateway's place.
until curl -s -o /dev/null --noproxy '*' --max-time 2 "$url/"; do
  kill -0 "$(<"$SCANHOOK_STATE/gateway.pid")" 2>/dev/null \
    || die "the gateway exited; last lines of .scanhook/gateway.log:
$(tail -n 20 "$SCANHOOK_STATE/gateway.log")"
  ((++tries < 60)) || die "the gateway does not answer on $url after 30 s, see .scanhook/gateway.log"
  sleep 0.5
done
kill -0 "$(<"$SCANHOOK_STATE/worker.pid")" 2>/dev/null \
  || die "the worker exited; last lines of .scanhook/worker.log:
$(tail -n 20 "$SCANHOOK_STATE/worker.log")"

# The setting may list several secrets for rotation; any of them signs validly.
secret=${SCANHOOK__WEBHOOK__SECRET%%,*}
secret=${secret//[[:space:]]/}
body='{"scan_id":1}'
signature=$(printf '%s' "$body" | openssl dgst -sha256 -hmac "$secret" | awk '{print $NF}')

cat <<EOF

scanhook is running: gateway on $url, worker in the background (logs in .scanhook/).
Stop them with scripts/down.sh; PostgreSQL and RabbitMQ keep running.

Send a signed webhook for the demo case:

  curl -i -X POST '$url/v1/webhooks/scans/605914' \\
    -H 'Content-Type: application/json' \\
    -H 'X-Webhook-Signature: sha256=$signature' \\
    --data-binary '$body'

Metrics, health and readiness: http://127.0.0.1:9090/metrics (gateway) and
http://127.0.0.1:9091/metrics (worker), each also with /healthz and /readyz.
Or with the scanhook command (target/release/scanhook, reads the same settings):

  . .scanhook/credentials.env
  SCANHOOK__WEBHOOK__SECRET=\$SCANHOOK_WEBHOOK_SECRET target/release/scanhook send --url $url --patient 605914

See what the worker recorded:

  psql '$SCANHOOK__DATABASE__URL' -c 'SELECT * FROM activity_logs ORDER BY created_at DESC;'

EOF
