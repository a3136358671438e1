# shellcheck shell=bash
# Helpers sourced by the scripts in this directory. Sourcing exports the SCANHOOK__* settings
# of the binaries and the SCANHOOK_TEST_* URLs of the integration tests; ensure_postgres and
# ensure_rabbitmq make the local services match them.

set -euo pipefail

SCANHOOK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCANHOOK_STATE="$SCANHOOK_ROOT/.scanhook"
SCANHOOK_CREDENTIALS="$SCANHOOK_STATE/credentials.env"
SCANHOOK_PG_CLUSTER="${SCANHOOK_PG_CLUSTER:-15/main}"
SCANHOOK_PG_PORT=5432
# The management UI makes a cold broker start about 4 s slower; up.sh turns it on.
SCANHOOK_RABBITMQ_MANAGEMENT="${SCANHOOK_RABBITMQ_MANAGEMENT:-0}"

# Daemons started from here must not inherit the secrets exported below, and a UTF-8 locale
# makes a freshly created PostgreSQL cluster use UTF8 rather than SQL_ASCII.
CLEAN_ENV=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if ((EUID == 0)); then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "root rights are needed for: $*"
  fi
}

as_postgres() {
  if ((EUID == 0)); then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

# Runs apt-get update at most once per script run. The lock timeout rides out the automatic
# upgrades that fresh cloud machines often run at boot.
apt_install() {
  log "installing $* with apt-get (output in $SCANHOOK_STATE/apt.log)"
  if [[ -z ${SCANHOOK_APT_UPDATED:-} ]]; then
    as_root "${CLEAN_ENV[@]}" apt-get -o DPkg::Lock::Timeout=300 update >>"$SCANHOOK_STATE/apt.log" 2>&1 \
      || die "apt-get update failed, see $SCANHOOK_STATE/apt.log"
    SCANHOOK_APT_UPDATED=1
  fi
  as_root "${CLEAN_ENV[@]}" DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 \
    install -y --no-install-recommends "$@" >>"$SCANHOOK_STATE/apt.log" 2>&1 \
    || die "apt-get install $* failed, see $SCANHOOK_STATE/apt.log"
}

random_hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# Passwords are generated once per checkout and reused, so the database role, the broker user
# and every later run agree on them.
load_credentials() {
  # Also holds the logs of the gateway and worker, which may show patient identifiers.
  mkdir -p "$SCANHOOK_STATE"
  chmod 700 "$SCANHOOK_STATE"
  (umask 077 && touch "$SCANHOOK_CREDENTIALS")
  chmod 600 "$SCANHOOK_CREDENTIALS"
  local key
  for key in SCANHOOK_DB_PASSWORD SCANHOOK_AMQP_PASSWORD SCANHOOK_WEBHOOK_SECRET; do
    grep -q "^$key=" "$SCANHOOK_CREDENTIALS" \
      || printf '%s=%s\n' "$key" "$(random_hex)" >>"$SCANHOOK_CREDENTIALS"
  done
  # shellcheck source=/dev/null
  . "$SCANHOOK_CREDENTIALS"
  # They end up in URLs, SQL and rabbitmqctl's shell wrapper: keep them to safe characters.
  for key in SCANHOOK_DB_PASSWORD SCANHOOK_AMQP_PASSWORD SCANHOOK_WEBHOOK_SECRET; do
    [[ ${!key} =~ ^[A-Za-z0-9]+$ ]] || die "$key in $SCANHOOK_CREDENTIALS must be letters and digits only"
  done
}

load_credentials
export SCANHOOK__DATABASE__URL="postgres://scanhook:$SCANHOOK_DB_PASSWORD@127.0.0.1:$SCANHOOK_PG_PORT/scanhook"
export SCANHOOK__AMQP__URL="amqp://scanhook:$SCANHOOK_AMQP_PASSWORD@127.0.0.1:5672/%2f"
export SCANHOOK__WEBHOOK__SECRET="${SCANHOOK__WEBHOOK__SECRET:-$SCANHOOK_WEBHOOK_SECRET}"
export SCANHOOK__GATEWAY__LISTEN="${SCANHOOK__GATEWAY__LISTEN:-0.0.0.0:8080}"
export SCANHOOK_TEST_DATABASE_URL="postgres://scanhook:$SCANHOOK_DB_PASSWORD@127.0.0.1:$SCANHOOK_PG_PORT/postgres"
export SCANHOOK_TEST_AMQP_URL="$SCANHOOK__AMQP__URL"

ensure_postgres() {
  local version=${SCANHOOK_PG_CLUSTER%/*} name=${SCANHOOK_PG_CLUSTER#*/} status port
  if ! command -v pg_lsclusters >/dev/null || [[ ! -x /usr/lib/postgresql/$version/bin/postgres ]]; then
    apt_install "postgresql-$version"
  fi
  if ! pg_lsclusters --no-header "$version" "$name" >/dev/null 2>&1; then
    log "creating PostgreSQL cluster $version/$name"
    as_root "${CLEAN_ENV[@]}" pg_createcluster "$version" "$name" >>"$SCANHOOK_STATE/postgres.log" 2>&1 \
      || die "pg_createcluster failed, see $SCANHOOK_STATE/postgres.log"
  fi
  read -r _ _ port status _ < <(pg_lsclusters --no-header "$version" "$name")
  [[ $port == "$SCANHOOK_PG_PORT" ]] \
    || die "cluster $version/$name listens on port $port, expected $SCANHOOK_PG_PORT"
  if [[ $status != online* ]]; then
    log "starting PostgreSQL $version/$name"
    as_root "${CLEAN_ENV[@]}" pg_ctlcluster "$version" "$name" start >>"$SCANHOOK_STATE/postgres.log" 2>&1 \
      || die "PostgreSQL did not start, see /var/log/postgresql/postgresql-$version-$name.log"
  fi
  local tries=0
  until pg_isready -q -h 127.0.0.1 -p "$port"; do
    ((++tries < 30)) || die "PostgreSQL does not accept connections on 127.0.0.1:$port"
    sleep 1
  done

  # The password travels on stdin (not on a command line) and is reset on every run, so it
  # always matches the credentials file.
  as_postgres psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres >/dev/null <<SQL
\set pw '$SCANHOOK_DB_PASSWORD'
SELECT 'CREATE ROLE scanhook' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'scanhook') \gexec
ALTER ROLE scanhook WITH LOGIN CREATEDB PASSWORD :'pw';
SELECT 'CREATE DATABASE scanhook OWNER scanhook'
  WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'scanhook') \gexec
SQL
  # Proves that host connections with a password work (pg_hba.conf), as the binaries use them.
  psql -X -q -At -d "$SCANHOOK__DATABASE__URL" -c 'SELECT 1' >/dev/null \
    || die "cannot log in as scanhook over TCP; check pg_hba.conf of cluster $version/$name"
  log "PostgreSQL ready on 127.0.0.1:$port (database scanhook, role scanhook)"
}

rabbitmq_running() { as_root rabbitmqctl -q await_startup --timeout 5 >/dev/null 2>&1; }
rabbitmq_booting() { pgrep -u rabbitmq -f -- ' -s rabbit boot' >/dev/null; }

ensure_rabbitmq() {
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  command -v pgrep >/dev/null || apt_install procps
  if ! rabbitmq_running; then
    if ! rabbitmq_booting; then
      if [[ $SCANHOOK_RABBITMQ_MANAGEMENT == 1 ]]; then
        as_root rabbitmq-plugins -q enable --offline rabbitmq_management >/dev/null
      fi
      log "starting RabbitMQ (server log in /var/log/rabbitmq/)"
      if [[ -d /run/systemd/system ]]; then
        as_root systemctl start rabbitmq-server
      else
        # Output goes to a file, not a pipe: the detached node keeps these descriptors open.
        as_root "${CLEAN_ENV[@]}" rabbitmq-server -detached >>"$SCANHOOK_STATE/rabbitmq.log" 2>&1 </dev/null
      fi
    fi
    # await_startup fails at once until the node has registered with epmd, hence the loop.
    local deadline=$((SECONDS + 120))
    until rabbitmq_running; do
      ((SECONDS < deadline)) || die "RabbitMQ did not start within 120 s, see /var/log/rabbitmq/"
      rabbitmq_booting || die "RabbitMQ stopped while starting, see /var/log/rabbitmq/ and $SCANHOOK_STATE/rabbitmq.log"
      sleep 1
    done
  elif [[ $SCANHOOK_RABBITMQ_MANAGEMENT == 1 ]] && ! as_root rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
    as_root rabbitmq-plugins -q enable rabbitmq_management >/dev/null
  fi

  # Passwords go through stdin: rabbitmqctl reads them from there when the argument is absent.
  local users
  users=$(as_root rabbitmqctl -q -s list_users | cut -f1)
  if grep -qx scanhook <<<"$users"; then
    printf '%s\n' "$SCANHOOK_AMQP_PASSWORD" | as_root rabbitmqctl -q change_password scanhook >/dev/null
  else
    printf '%s\n' "$SCANHOOK_AMQP_PASSWORD" | as_root rabbitmqctl -q add_user scanhook >/dev/null
  fi
  as_root rabbitmqctl -q set_user_tags scanhook administrator >/dev/null
  as_root rabbitmqctl -q set_permissions -p / scanhook '.*' '.*' '.*' >/dev/null
  log "RabbitMQ ready on 127.0.0.1:5672 (user scanhook, vhost /)"
}

# Background processes started by up.sh: .scanhook/<name>.pid and .scanhook/<name>.log.
start_background() {
  local name=$1 bin=$2
  [[ -x $bin ]] || die "$bin is missing; build it first"
  nohup "$bin" >"$SCANHOOK_STATE/$name.log" 2>&1 </dev/null &
  echo $! >"$SCANHOOK_STATE/$name.pid"
  log "$name started (pid $!, log .scanhook/$name.log)"
}

# Only a pid whose executable is still ours is signalled: pids get reused.
stop_background() {
  local name=$1 pidfile="$SCANHOOK_STATE/$1.pid" pid exe
  [[ -f $pidfile ]] || return 0
  pid=$(<"$pidfile")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null || true)
  # A rebuild replaces the file under a running process.
  if [[ $pid =~ ^[0-9]+$ && ${exe% (deleted)} == */scanhook-$name ]]; then
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local tries=0
    while kill -0 "$pid" 2>/dev/null; do
      # The binaries drain in-flight work for up to 30 s on SIGTERM.
      if ((++tries > 35)); then
        log "$name still running after 35 s, killing it"
        kill -KILL "$pid" 2>/dev/null || true
        break
      fi
      sleep 1
    done
  fi
  rm -f "$pidfile"
}
