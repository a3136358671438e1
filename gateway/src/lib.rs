//! The scanhook gateway: receives signed scan notifications, checks them, queues them durably
//! and answers 202 once the broker has confirmed the event.

pub mod access;
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

pub use app::{App, StartError};

/// Connects everything and serves on `listener` until `shutdown` resolves.
pub async fn run(
    settings: &Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let app = Arc::new(App::connect(settings).await?);
    server::serve(listener, app, server::ServerOptions::new(&settings.gateway), shutdown).await;
    Ok(())
}
