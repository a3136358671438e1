use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tracing::{error, info, warn};

use scanhook_gateway::App;
use scanhook_shared::{Needs, Settings, admin, shutdown, telemetry};

/// How long start-up keeps trying to reach the database and the broker.
const STARTUP_PATIENCE: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(err) => return fail(&err.to_string()),
    };
    if let Err(err) = settings.require(&[Needs::Database, Needs::Broker, Needs::WebhookSecret]) {
        return fail(&err.to_string());
    }
    telemetry::init(&settings.log);
    let metrics = scanhook_shared::metrics::recorder();
    let admin_listener = match admin::open(
        &settings.gateway.admin_listen,
        "SCANHOOK__GATEWAY__ADMIN_LISTEN",
    )
    .await
    {
        Ok(listener) => listener,
        Err(err) => return fail(&err),
    };

    let Some(app) = connect_patiently(&settings).await else {
        return ExitCode::FAILURE;
    };
    let app = Arc::new(app);
    if let Some(listener) = admin_listener {
        admin::spawn(listener, metrics, app.status());
    }
    let listener = match TcpListener::bind(settings.gateway.listen).await {
        Ok(listener) => listener,
        Err(err) => return fail(&format!("cannot listen on {}: {err}", settings.gateway.listen)),
    };
    info!(listen = %settings.gateway.listen, queue = %settings.amqp.queue, "gateway ready");

    let options = scanhook_gateway::server::ServerOptions::new(&settings.gateway);
    scanhook_gateway::server::serve(listener, app, options, shutdown::signal()).await;
    info!("gateway stopped");
    ExitCode::SUCCESS
}

async fn connect_patiently(settings: &Settings) -> Option<App> {
    let started = tokio::time::Instant::now();
    loop {
        match App::connect(settings).await {
            Ok(app) => return Some(app),
            Err(err) if started.elapsed() < STARTUP_PATIENCE => {
                warn!(error = %err, "dependencies not ready; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(err) => {
                error!(error = %err, "giving up on start-up");
                return None;
            }
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("scanhook-gateway: {message}");
    ExitCode::FAILURE
}
