//! What the fault-injection tests do to the shared services and to worker processes: a vhost of
//! their own, stopping and starting RabbitMQ and PostgreSQL, and real worker processes that can
//! be killed with SIGKILL. The commands come from the environment (`scripts/test.sh` sets them).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use scanhook_shared::Settings;

fn command_from_env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the fault tests with scripts/test.sh"))
}

/// Runs one of the configured service commands, checks that it worked, returns its output.
pub async fn run_service_command(variable: &str, args: &[&str]) -> String {
    let command = command_from_env(variable);
    let full = format!("{command} {}", args.join(" "));
    let output = Command::new("sh").arg("-c").arg(&full).output().await.expect("spawn sh");
    assert!(
        output.status.success(),
        "{full} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub async fn rabbitmqctl(args: &[&str]) -> String {
    run_service_command("SCANHOOK_TEST_RABBITMQCTL", args).await
}

pub async fn stop_broker() {
    run_service_command("SCANHOOK_TEST_BROKER_STOP", &[]).await;
}

pub async fn start_broker() {
    run_service_command("SCANHOOK_TEST_BROKER_START", &[]).await;
}

pub async fn stop_database() {
    run_service_command("SCANHOOK_TEST_DATABASE_STOP", &[]).await;
}

pub async fn start_database() {
    run_service_command("SCANHOOK_TEST_DATABASE_START", &[]).await;
}

/// The user name of an AMQP URL.
pub fn amqp_user(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let credentials = rest.rsplit_once('@').map_or("guest", |(c, _)| c);
    credentials.split(':').next().unwrap_or("guest").to_owned()
}

/// `url` pointed at `vhost`.
pub fn with_vhost(url: &str, vhost: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a scheme");
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    format!("{scheme}://{authority}/{vhost}")
}

/// A process of one of the real binaries (worker or gateway), killed when dropped.
pub struct WorkerProcess {
    child: Child,
    pub log: PathBuf,
}

/// The gateway binary as a process; the same handle as a worker's.
pub type GatewayProcess = WorkerProcess;

impl WorkerProcess {
    /// `scanhook-worker` on the settings' database and queue, its admin listener on any port.
    pub fn start(settings: &Settings, name: &str) -> Self {
        Self::start_binary(
            &worker_binary(),
            settings,
            name,
            &[
                ("SCANHOOK__WORKER__ADMIN_LISTEN", "127.0.0.1:0"),
                ("SCANHOOK__LOG__FILTER", "warn,scanhook_worker=info"),
            ],
        )
    }

    /// `binary` with the settings' database, broker, queue and worker knobs in its environment
    /// (and nothing else of the test's), plus `extra`; output to a log file named after `name`.
    pub fn start_binary(
        binary: &std::path::Path,
        settings: &Settings,
        name: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        let log = std::env::temp_dir().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("process log file");
        let delays: Vec<String> =
            settings.worker.retry_delays_ms.iter().map(u64::to_string).collect();
        let mut command = Command::new(binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SCANHOOK__DATABASE__URL", settings.database.url.expose())
            .env(
                "SCANHOOK__DATABASE__ACQUIRE_TIMEOUT_MS",
                settings.database.acquire_timeout_ms.to_string(),
            )
            .env("SCANHOOK__AMQP__URL", settings.amqp.url.expose())
            .env("SCANHOOK__AMQP__QUEUE", &settings.amqp.queue)
            .env("SCANHOOK__WORKER__RETRY_DELAYS_MS", delays.join(","))
            .env("SCANHOOK__WORKER__CONCURRENCY", settings.worker.concurrency.to_string())
            .env("SCANHOOK__WORKER__PREFETCH", settings.worker.prefetch.to_string())
            .env("SCANHOOK__WORKER__BATCH_SIZE", settings.worker.batch_size.to_string())
            .env("SCANHOOK__WORKER__BATCH_WAIT_MS", settings.worker.batch_wait_ms.to_string());
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log file"))
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        Self { child, log }
    }

    /// What the process has written so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to finish, acknowledge or close anything.
    pub async fn kill_9(mut self) {
        self.child.start_kill().expect("kill -9");
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// SIGTERM, then waits for the process to exit on its own.
    pub async fn terminate(mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().expect("running");
        let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.ok()?.ok()
    }
}

/// The gateway binary of this package, built with its tests.
pub fn gateway_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scanhook-gateway"))
}

/// A port of 127.0.0.1 that was free a moment ago, for a process that must be told its port.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("address").port()
}

/// `target/<profile>/scanhook-worker`, built with the tests.
pub fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target directory");
    let binary = dir.join("scanhook-worker");
    assert!(
        binary.exists(),
        "{} is missing: it is built with the workspace tests (cargo nextest run --workspace)",
        binary.display()
    );
    binary
}
