#!/usr/bin/env bash
# The benchmark: the gateway and the worker against the ceilings of this machine, on loopback.
#
#   scripts/bench.sh            full run: release build, 15 s per HTTP row, drains of 100,000
#                               events, growth rows with 1,000,000 cases and activity logs
#   scripts/bench.sh --smoke    the same rows for seconds each on the debug build, so that the
#                               benchmark cannot rot; fails when a row gives no figure
#
# It uses a database (scanhook_bench) and a RabbitMQ vhost (scanhook_bench) of its own, made
# afresh and removed at the end, and its own webhook secret. Working files and the logs of the
# processes it starts are in .scanhook/bench/. SCANHOOK_BENCH_BIN=DIR uses the binaries in DIR
# instead of building them. The figures, the targets and their ratios are the last lines.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$SCANHOOK_ROOT"

mode=full
case ${1:-} in
  "") ;;
  --smoke) mode=smoke ;;
  *) die "usage: scripts/bench.sh [--smoke]" ;;
esac

# Every HTTP row: the same connections, wrk threads and duration; a warm-up before each.
connections=32
threads=2
patients=1000
base_cases=1000
if [[ $mode == full ]]; then
  duration=15 warmup=3 backlog=100000 growth_cases=1000000 growth_logs=1000000
else
  duration=2 warmup=1 backlog=1000 growth_cases=20000 growth_logs=20000
fi
ceiling_port=18480
gateway_port=18481
started_at=$SECONDS

work="$SCANHOOK_STATE/bench"
rm -rf "$work"
mkdir -p "$work"
chmod 700 "$work"
figures="$work/figures"
: >"$figures"

command -v cargo >/dev/null || die "cargo not found; install Rust with rustup first"
ensure_postgres
ensure_rabbitmq
command -v wrk >/dev/null || apt_install wrk
command -v pgbench >/dev/null || die "pgbench not found (it comes with PostgreSQL's client package)"
if ! command -v oha >/dev/null; then
  # wrk has no fixed-rate mode and wrk2 is not packaged; oha's -q with --latency-correction is.
  log "installing oha from crates.io for the fixed-rate row (once; about 4 minutes on 2 cores)"
  cargo install oha --locked >>"$SCANHOOK_STATE/oha-install.log" 2>&1 \
    || die "cargo install oha failed, see $SCANHOOK_STATE/oha-install.log"
fi
for port in $ceiling_port $gateway_port; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use; the benchmark listens there"
  fi
done

# Binaries: release for the full run; for the smoke run the debug ones the tests built.
if [[ -n ${SCANHOOK_BENCH_BIN:-} ]]; then
  bin=$SCANHOOK_BENCH_BIN
elif [[ $mode == full ]]; then
  log "building release binaries"
  cargo build --release --locked
  bin="$SCANHOOK_ROOT/target/release"
else
  bin="$SCANHOOK_ROOT/target/debug"
  missing=()
  for name in scanhook-gateway scanhook-worker scanhook-migrate scanhook-bench; do
    [[ -x $bin/$name ]] || missing+=(--bin "$name")
  done
  if ((${#missing[@]})); then
    log "building the missing debug binaries: ${missing[*]}"
    cargo build --locked "${missing[@]}"
  fi
fi
for name in scanhook-gateway scanhook-worker scanhook-migrate scanhook-bench; do
  [[ -x $bin/$name ]] || die "$bin/$name is missing"
done

# The benchmark's own database, vhost, queue and secret. Passwords stay in the environment.
db=scanhook_bench
vhost=scanhook_bench
export PGPASSWORD=$SCANHOOK_DB_PASSWORD PGHOST=127.0.0.1 PGPORT=$SCANHOOK_PG_PORT PGUSER=scanhook
export PGOPTIONS="-c client_min_messages=warning"
export SCANHOOK__DATABASE__URL="postgres://scanhook:$SCANHOOK_DB_PASSWORD@127.0.0.1:$SCANHOOK_PG_PORT/$db"
export SCANHOOK__AMQP__URL="amqp://scanhook:$SCANHOOK_AMQP_PASSWORD@127.0.0.1:5672/$vhost"
export SCANHOOK__AMQP__QUEUE=scanhook-bench.scans
SCANHOOK__WEBHOOK__SECRET=$(random_hex)
export SCANHOOK__WEBHOOK__SECRET
export SCANHOOK__GATEWAY__LISTEN="127.0.0.1:$gateway_port"
# Several workers run at once: their admin listeners take any free port.
export SCANHOOK__GATEWAY__ADMIN_LISTEN=127.0.0.1:0 SCANHOOK__WORKER__ADMIN_LISTEN=127.0.0.1:0
unset SCANHOOK_TEST_DATABASE_URL SCANHOOK_TEST_AMQP_URL RUST_LOG

started_pids=()
cleanup() {
  local status=$? pid
  for pid in "${started_pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
  as_root rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
  psql -X -q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  ((status == 0)) || printf 'error: the benchmark failed; logs in %s\n' "$work" >&2
  exit "$status"
}
trap cleanup EXIT

log "benchmark database $db and vhost $vhost, made afresh"
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $db" >/dev/null
as_root rabbitmqctl -q delete_vhost "$vhost" >/dev/null 2>&1 || true
as_root rabbitmqctl -q add_vhost "$vhost" >/dev/null
as_root rabbitmqctl -q set_permissions -p "$vhost" scanhook '.*' '.*' '.*' >/dev/null
"$bin/scanhook-migrate" up >"$work/migrate.log" 2>&1 || die "migrations failed, see $work/migrate.log"

bench() { "$bin/scanhook-bench" "$@"; }

# Prints and records one figure; every figure must be a number.
figure() {
  local key=$1 value=$2
  [[ $value =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || die "row $key gave no figure (got '$value')"
  printf '%s=%s\n' "$key" "$value" >>"$figures"
  log "figure $key=$value"
}
get() { sed -n "s/^$1=//p" "$figures" | tail -n 1; }
# A key=value word from a line of scanhook-bench output.
word() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p"; }
calc() { awk "BEGIN { printf \"%.${2:-2}f\", $1 }"; }

# Starts a process in the background, logging to $work/NAME.log; its pid is in $last_pid.
start() {
  local name=$1
  shift
  "$@" >"$work/$name.log" 2>&1 </dev/null &
  last_pid=$!
  started_pids+=("$last_pid")
}
stop() {
  local pid=$1 tries=0
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    ((++tries < 350)) || { kill -KILL "$pid" 2>/dev/null || true; break; }
    sleep 0.1
  done
  wait "$pid" 2>/dev/null || true
}
wait_port() {
  local port=$1 pid=$2 name=$3 tries=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$name exited; see $work/$name.log"
    ((++tries < 600)) || die "$name does not listen on port $port after 60 s"
    sleep 0.1
  done
}
# Peak resident memory (VmHWM) of a running process, in MiB.
peak_rss() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# Where the CPU went during a row: the machine's busy time (/proc/stat) and the CPU time of the
# processes by name (/proc/PID/stat), between cpu_mark and cpu_report, in % of one core (the
# machine has $(nproc) x 100). A process counts with the children it has reaped, so PostgreSQL's
# exited backends count for postgres; "rest" is everything else (the kernel, this script).
cpu_snapshot() {
  {
    head -n 1 /proc/stat
    # utime + stime, and cutime + cstime: what exited children used (the postmaster's backends).
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{ t[$2] += $14 + $15 + $16 + $17 } END { for (c in t) print c, t[c] }'
  } >"$1"
}
cpu_mark() { cpu_snapshot "$work/cpu.before"; }
cpu_report() {
  cpu_snapshot "$work/cpu.after"
  local line
  line=$(awk -v cores="$(nproc)" '
    FNR == 1 {
      busy = $2 + $3 + $4 + $7 + $8 + $9; all = busy + $5 + $6
      if (NR == 1) { busy0 = busy; all0 = all } else { busy1 = busy; all1 = all }
      next
    }
    NR == FNR { before[$1] = $2; next }
    {
      name = ""
      if ($1 == "(scanhook-gatewa)") name = "gateway"
      else if ($1 == "(scanhook-worker)") name = "worker"
      else if ($1 == "(postgres)") name = "postgres"
      else if ($1 == "(beam.smp)") name = "rabbitmq"
      else if ($1 == "(scanhook-bench)") name = "bench"
      else if ($1 == "(wrk)" || $1 == "(oha)" || $1 == "(pgbench)") name = "load"
      if (name != "" && $2 > before[$1]) used[name] += $2 - before[$1]
    }
    END {
      core = (all1 - all0) / cores
      if (core <= 0) exit
      named = 0
      for (n in used) named += used[n]
      out = ""
      split("gateway worker postgres rabbitmq bench load", order, " ")
      for (i = 1; i <= 6; i++) if (order[i] in used) out = out sprintf("%s=%.0f ", order[i], 100 * used[order[i]] / core)
      printf "%srest=%.0f busy=%.0f", out, 100 * (busy1 - busy0 - named) / core, 100 * (busy1 - busy0) / core
    }' "$work/cpu.before" "$work/cpu.after")
  printf '%-22s %s\n' "$1" "$line" >>"$work/cpu"
  log "cpu % of one core, $1: $line"
}

# wrk for the warm-up, then for the measured duration. Records NAME_per_s (answers 2xx per
# second: the 202s), NAME_p50_ms and NAME_p99_ms (closed loop, at full load).
run_wrk() {
  local name=$1 port=$2 requests=$3 out="$work/$1.wrk"
  local url="http://127.0.0.1:$port"
  wrk -t"$threads" -c"$connections" -d"${warmup}s" -s "$requests/requests.lua" "$url" \
    -- "$requests/requests.tsv" >"$work/$name.warmup.wrk" 2>&1 || die "wrk failed, see $work/$name.warmup.wrk"
  cpu_mark
  wrk -t"$threads" -c"$connections" -d"${duration}s" --latency -s "$requests/requests.lua" "$url" \
    -- "$requests/requests.tsv" >"$out" 2>&1 || die "wrk failed, see $out"
  cpu_report "$name"
  local total seconds non2xx
  total=$(awk '/requests in/ { print $1 }' "$out")
  seconds=$(awk '/requests in/ { sub(/s,?$/, "", $4); print $4 }' "$out")
  non2xx=$(awk '/Non-2xx or 3xx responses/ { print $NF }' "$out")
  non2xx=${non2xx:-0}
  [[ -n $total && -n $seconds ]] || die "no wrk figures in $out"
  if ((non2xx * 100 > total)); then
    die "$name: $non2xx of $total answers were not 2xx, see $out and $work/*.log"
  fi
  ((non2xx == 0)) || log "$name: $non2xx of $total answers were not 2xx"
  figure "${name}_per_s" "$(calc "($total - $non2xx) / $seconds" 0)"
  figure "${name}_p50_ms" "$(wrk_ms "$out" 50%)"
  figure "${name}_p99_ms" "$(wrk_ms "$out" 99%)"
}
wrk_ms() {
  awk -v p="$2" '$1 == p {
    v = $2; unit = v; sub(/[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
    if (unit == "us") v /= 1000; else if (unit == "s") v *= 1000; else if (unit == "m") v *= 60000
    printf "%.2f", v
  }' "$1"
}

# Drains a backlog of $backlog events with N worker processes; records NAME_per_s.
run_drain() {
  local name=$1 workers=$2 cases=$3 marker out pids=() i
  bench reset >/dev/null
  out=$(bench backlog --events "$backlog" --patients "$patients" --cases "$cases")
  log "$out"
  out=$(bench marker)
  marker=$(word marker "$out")
  cpu_mark
  for ((i = 1; i <= workers; i++)); do
    start "$name-worker-$i" "$bin/scanhook-worker"
    pids+=("$last_pid")
  done
  out=$(bench drain-wait --after-id "$marker" --expect "$backlog") || die "$name: the backlog was not drained, see $work/$name-worker-*.log"
  cpu_report "$name"
  log "$out"
  figure "${name}_per_s" "$(word drain_events_per_s "$out")"
  figure "${name}_wall_per_s" "$(word wall_events_per_s "$out")"
  figure "${name}_worker_rss_mib" "$(peak_rss "${pids[0]}")"
  for i in "${pids[@]}"; do stop "$i"; done
}

knobs=$(bench settings)
read -r -a knobs <<<"$knobs"
worker_concurrency=$(word worker_concurrency "${knobs[*]}")
worker_batch=$(word worker_batch_size "${knobs[*]}")
log "mode $mode: $connections connections, $threads wrk threads, ${duration} s per row after ${warmup} s of warm-up; settings: ${knobs[*]}"

out=$(bench seed --cases "$base_cases")
log "$out"
out=$(bench requests --out "$work/requests-$base_cases" --patients "$patients" --cases "$base_cases")
log "$out"

log "row 1: HTTP ceiling (bare hyper server, the gateway's 202 envelope)"
start http-ceiling "$bin/scanhook-bench" http-ceiling --listen "127.0.0.1:$ceiling_port"
ceiling_pid=$last_pid
wait_port "$ceiling_port" "$ceiling_pid" http-ceiling
run_wrk http_ceiling "$ceiling_port" "$work/requests-$base_cases"
stop "$ceiling_pid"

log "row 2: broker ceiling ($connections publishers, persistent, one confirm awaited at a time each)"
out=$(bench broker-ceiling --publishers "$connections" --duration "$duration")
log "$out"
figure broker_ceiling_per_s "$(word broker_ceiling_msgs_per_s "$out")"
figure event_bytes "$(word size "$out")"

log "row 3: gateway, every check on, $base_cases cases (no worker running)"
start gateway "$bin/scanhook-gateway"
gateway_pid=$last_pid
wait_port "$gateway_port" "$gateway_pid" gateway
run_wrk gateway "$gateway_port" "$work/requests-$base_cases"
figure gateway_full_load_rss_mib "$(peak_rss "$gateway_pid")"
stop "$gateway_pid"
out=$(bench purge)
log "$out"

log "row 5: worker drain of $backlog events, 1 worker process"
run_drain drain_1_worker 1 "$base_cases"
log "row 5: worker drain of $backlog events, 2 worker processes"
run_drain drain_2_workers 2 "$base_cases"

# Row 4: the database ceiling is the worker's transaction with full batches, as a backlog fills
# them; the one-event transaction (what light traffic gives) is shown beside it.
pgbench_row() { # name, events per transaction
  bench reset >/dev/null
  local vars
  vars=$(bench pgbench-script --out "$work/$1.sql" --batch "$2" --patients "$patients" --cases "$base_cases")
  read -r -a vars <<<"$vars"
  cpu_mark
  pgbench -n -M prepared -c "$worker_concurrency" -j 2 -T "$duration" "${vars[@]}" \
    -f "$work/$1.sql" "$db" >"$work/$1.log" 2>&1 || die "pgbench failed, see $work/$1.log"
  cpu_report "$1"
  local tps
  tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$work/$1.log")
  figure "$1_tps" "$tps"
  figure "$1_events_per_s" "$(calc "$tps * $2" 0)"
}
log "row 4: database ceiling, pgbench with the worker's transaction of $worker_batch events, $worker_concurrency clients"
pgbench_row pgbench_batch "$worker_batch"
log "row 4: the same with one event per transaction"
pgbench_row pgbench_single 1

log "row 6: latency at half the gateway's maximum, the gateway alone, then with one worker applying"
rate=$(calc "$(get gateway_per_s) / 2" 0)
((rate >= 1)) || die "the gateway's rate is too low for row 6"
bench reset >/dev/null
start gateway-fixed-rate "$bin/scanhook-gateway"
gateway_pid=$last_pid
wait_port "$gateway_port" "$gateway_pid" gateway-fixed-rate
out=$(bench one-request)
body=$(sed -n 1p <<<"$out") signature=$(sed -n 2p <<<"$out")
sed "s|^|http://127.0.0.1:$gateway_port|" "$work/requests-$base_cases/paths.txt" >"$work/urls.txt"
oha_run() {
  # -w: requests still in flight at the deadline are waited for, not counted as errors.
  oha --no-tui --output-format json -z "$1" -w -c "$connections" -q "$rate" --latency-correction \
    -m POST -H 'Content-Type: application/json' -H "X-Webhook-Signature: $signature" -d "$body" \
    --urls-from-file "$work/urls.txt" >"$2" 2>&1 || die "oha failed, see $2"
}
oha_run "${warmup}s" "$work/fixed-rate-alone.warmup.json"
cpu_mark
oha_run "${duration}s" "$work/fixed-rate-alone.json"
cpu_report fixed_rate_alone
out=$(bench oha-summary --file "$work/fixed-rate-alone.json") || die "no figures from oha, see $work/fixed-rate-alone.json"
log "gateway alone: $out"
figure fixed_rate_alone_p50_ms "$(word latency_p50_ms "$out")"
figure fixed_rate_alone_p99_ms "$(word latency_p99_ms "$out")"
figure fixed_rate_alone_achieved_per_s "$(word achieved_per_s "$out")"
out=$(bench purge)
log "$out"
start fixed-rate-worker "$bin/scanhook-worker"
worker_pid=$last_pid
oha_run "${warmup}s" "$work/fixed-rate.warmup.json"
out=$(bench marker)
marker=$(word marker "$out")
cpu_mark
oha_run "${duration}s" "$work/fixed-rate.json"
cpu_report fixed_rate
out=$(bench oha-summary --file "$work/fixed-rate.json") || die "no figures from oha, see $work/fixed-rate.json"
log "$out"
accepted=$(word accepted "$out")
((accepted > 0)) || die "no 202 at the fixed rate, see $work/fixed-rate.json"
(($(word other_status "$out") + $(word errors "$out") == 0)) || log "fixed rate: some answers were not 202 ($out)"
figure fixed_rate_per_s "$rate"
figure fixed_rate_achieved_per_s "$(word achieved_per_s "$out")"
figure fixed_rate_p50_ms "$(word latency_p50_ms "$out")"
figure fixed_rate_p99_ms "$(word latency_p99_ms "$out")"
figure fixed_rate_p999_ms "$(word latency_p999_ms "$out")"
# Everything accepted with the worker running (warm-up and measured run) must be applied.
warm=$(bench oha-summary --file "$work/fixed-rate.warmup.json") || die "no figures from the warm-up, see $work/fixed-rate.warmup.json"
expected=$(($(word accepted "$warm") + accepted))
out=$(bench drain-wait --after-id 0 --expect "$expected") || die "row 6: not every accepted event was applied"
lag=$(bench lag --after-id "$marker") || die "row 6: no lag figures"
log "$lag"
figure lag_p50_ms "$(word lag_p50_ms "$lag")"
figure lag_p99_ms "$(word lag_p99_ms "$lag")"
figure lag_p999_ms "$(word lag_p999_ms "$lag")"
log "row 7: peak resident memory at the fixed rate"
figure gateway_rss_mib "$(peak_rss "$gateway_pid")"
figure worker_rss_mib "$(peak_rss "$worker_pid")"
stop "$gateway_pid"
stop "$worker_pid"

log "row 8: growth, $growth_cases cases"
out=$(bench seed --cases "$growth_cases")
log "$out"
out=$(bench requests --out "$work/requests-$growth_cases" --patients "$patients" --cases "$growth_cases")
log "$out"
start gateway-growth "$bin/scanhook-gateway"
gateway_pid=$last_pid
wait_port "$gateway_port" "$gateway_pid" gateway-growth
run_wrk gateway_growth "$gateway_port" "$work/requests-$growth_cases"
stop "$gateway_pid"
out=$(bench purge)
log "$out"
log "row 8: growth, drain with $growth_logs existing activity logs"
bench reset >/dev/null
out=$(bench seed --cases "$growth_cases" --logs "$growth_logs")
log "$out"
# Not run_drain: its reset would empty the seeded table.
out=$(bench marker)
marker=$(word marker "$out")
out=$(bench backlog --events "$backlog" --patients "$patients" --cases "$growth_cases")
log "$out"
cpu_mark
start drain-growth-worker "$bin/scanhook-worker"
worker_pid=$last_pid
out=$(bench drain-wait --after-id "$marker" --expect "$backlog") || die "growth drain failed, see $work/drain-growth-worker.log"
cpu_report drain_growth
log "$out"
figure drain_growth_per_s "$(word drain_events_per_s "$out")"
stop "$worker_pid"

elapsed=$((SECONDS - started_at))

# The summary: each figure, then the targets as ratios of figures of this run.
ratio() { calc "$1 / $2" 2; }
judge() { # name, value, comparison, bound
  local verdict
  verdict=$(awk -v v="$2" -v b="$4" -v op="$3" 'BEGIN { ok = (op == ">=") ? (v >= b) : (v <= b); print ok ? "holds" : "FAILS" }')
  printf '  %-44s %10s  %s %-6s %s\n' "$1" "$2" "$3" "$4" "$verdict"
}
g=$(get gateway_per_s) h=$(get http_ceiling_per_s) b=$(get broker_ceiling_per_s)
min_ceiling=$(awk -v h="$h" -v b="$b" 'BEGIN { print (h < b) ? h : b }')
d1=$(get drain_1_worker_per_s) d2=$(get drain_2_workers_per_s) pg=$(get pgbench_batch_events_per_s)

printf '\nscanhook benchmark, %s run (%s binaries), %s, %s cores, %s s\n' \
  "$mode" "$(basename "$bin")" "$(date -u +%Y-%m-%dT%H:%MZ)" "$(nproc)" "$elapsed"
[[ $mode == full ]] || printf 'smoke run: a debug build for seconds per row; these figures are not a benchmark\n'
printf '%s connections, %s s per HTTP row after %s s of warm-up, %s patients, backlog %s events\n' \
  "$connections" "$duration" "$warmup" "$patients" "$backlog"
printf 'figures:\n'
sed 's/^/  /' "$figures"
printf 'cpu, %% of one core (%s cores: %s at most); rest = the load generator and everything else:\n' "$(nproc)" "$(($(nproc) * 100))"
sed 's/^/  /' "$work/cpu"
printf 'targets:\n'
judge "gateway / min(HTTP, broker ceiling)" "$(ratio "$g" "$min_ceiling")" ">=" 0.8
judge "drain 1 worker / database ceiling" "$(ratio "$d1" "$pg")" ">=" 0.7
judge "drain 2 workers / drain 1 worker" "$(ratio "$d2" "$d1")" ">=" 1.5
printf '  %-44s %10s  (the line above counts while the database is not saturated)\n' \
  "drain 2 workers / database ceiling" "$(ratio "$d2" "$pg")"
judge "gateway p99 at half rate (ms)" "$(get fixed_rate_p99_ms)" "<=" 25
judge "lag 202 to applied p99 (ms)" "$(get lag_p99_ms)" "<=" 1000
judge "gateway peak RSS at half rate (MiB)" "$(get gateway_rss_mib)" "<=" 50
judge "worker peak RSS at half rate (MiB)" "$(get worker_rss_mib)" "<=" 50
judge "gateway, $growth_cases cases / $base_cases cases" "$(ratio "$(get gateway_growth_per_s)" "$g")" ">=" 0.9
judge "drain, $growth_logs logs / none" "$(ratio "$(get drain_growth_per_s)" "$d1")" ">=" 0.9
