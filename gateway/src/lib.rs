//! The scanhook gateway: receives signed scan notifications, checks them, queues them durably
//! and answers 202 once the broker has confirmed the event.

pub mod app;
pub mod body;
pub mod idempotency;
pub mod lookup;
pub mod patient;
pub mod response;
pub mod server;
pub mod signature;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use scanhook_shared::Settings;
use scanhook_shared::config::millis;

pub use app::{App, StartError};

/// Connects everything and serves on `listener` until `shutdown` resolves.
pub async fn run(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let app = Arc::new(App::connect(settings).await?);
    let options = server::ServerOptions {
        header_timeout: millis(settings.gateway.header_timeout_ms),
        shutdown_timeout: millis(settings.gateway.shutdown_timeout_ms),
    };
    server::serve(listener, app, options, shutdown).await;
    Ok(())
}
