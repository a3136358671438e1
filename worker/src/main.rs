use std::process::ExitCode;
use std::time::Duration;

use tracing::{error, info, warn};

use scanhook_shared::{Needs, Settings, admin, telemetry};

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
    let mut admin_listener = match admin::bind(&settings.worker.admin_listen).await {
        Ok(listener) => listener,
        Err(err) => {
            return fail(&format!(
                "cannot open the admin listener on {:?} (SCANHOOK__WORKER__ADMIN_LISTEN): {err}",
                settings.worker.admin_listen
            ));
        }
    };

    let started = tokio::time::Instant::now();
    loop {
        match scanhook_worker::Worker::connect(&settings).await {
            Ok(worker) => {
                if let Some(listener) = admin_listener.take() {
                    if let Ok(address) = listener.local_addr() {
                        info!(admin = %address, "admin listener ready (/metrics, /healthz, /readyz)");
                    }
                    let status = worker.status();
                    tokio::spawn(admin::serve(
                        listener,
                        metrics.clone(),
                        status,
                        std::future::pending(),
                    ));
                }
                worker.run(&settings, shutdown_signal()).await;
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

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    info!("shutdown signal received");
}
