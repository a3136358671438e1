use std::process::ExitCode;
use std::time::Duration;

use tracing::{error, info, warn};

use scanhook_shared::{Needs, Settings, admin, shutdown, telemetry};

/// How long start-up keeps trying to reach the database.
const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => return fail(&err.to_string()),
    };
    if let Err(err) = settings.require(&[Needs::Database, Needs::Broker]) {
        return fail(&err.to_string());
    }
    telemetry::init(&settings.log);
    info!(queue = %settings.amqp.queue, concurrency = settings.worker.concurrency, "worker starting");
    let metrics = scanhook_shared::metrics::recorder();
    let mut admin_listener =
        match admin::open(&settings.worker.admin_listen, "SCANHOOK__WORKER__ADMIN_LISTEN").await {
            Ok(listener) => listener,
            Err(err) => return fail(&err),
        };

    let started = tokio::time::Instant::now();
    loop {
        match scanhook_worker::Worker::connect(&settings).await {
            Ok(worker) => {
                if let Some(listener) = admin_listener.take() {
                    admin::spawn(listener, metrics.clone(), worker.status());
                }
                worker.run(&settings, shutdown::signal()).await;
                return ExitCode::SUCCESS;
            }
            Err(err) if started.elapsed() < STARTUP_PATIENCE => {
                warn!(error = %err, "dependencies not ready; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(err) => {
                error!(error = %err, "giving up on start-up");
                return ExitCode::FAILURE;
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("scanhook-worker: {message}");
    ExitCode::FAILURE
}
