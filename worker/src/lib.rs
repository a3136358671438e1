//! The scanhook worker: takes events off the queue and applies them to the database.

pub mod apply;
pub mod consumer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use scanhook_shared::broker::{PublishError, Publisher};
use scanhook_shared::config::millis;
use scanhook_shared::{Settings, Topology, db};

use crate::consumer::{Handler, pause, run_session};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("broker: {0}")]
    Broker(#[from] PublishError),
}

/// Connects to the database, then consumes until `shutdown` resolves; a broken broker session
/// is started again with a growing pause, so outages and consumer cancellations heal by
/// themselves.
pub async fn run(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let db = db::connect_lazy(&settings.database).await?;
    if let Err(err) = db.ping().await {
        warn!(error = %err, "database not reachable yet; events will be retried until it is");
    }
    let publisher = Publisher::new(
        &settings.amqp.url,
        "scanhook-worker",
        2,
        millis(settings.amqp.confirm_timeout_ms),
    )?;
    let topology = Topology::new(&settings.amqp.queue, &settings.retry_delays());
    let handler = Arc::new(Handler::new(db, topology, publisher));

    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let mut backoff = Duration::from_millis(250);
    loop {
        match run_session(settings, Arc::clone(&handler), stop_rx.clone()).await {
            Ok(()) => break,
            Err(err) => {
                warn!(error = %err, retry_in_ms = backoff.as_millis() as u64, "broker session ended");
                if pause(backoff, &mut stop_rx).await {
                    break;
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    info!("worker stopped");
    Ok(())
}
