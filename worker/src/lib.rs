//! The scanhook worker: takes events off the queue and applies them to the database.

pub mod apply;
pub mod consumer;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use scanhook_shared::admin::{self, BoxFuture, Status};
use scanhook_shared::broker::{PublishError, Publisher};
use scanhook_shared::config::millis;
use scanhook_shared::{Settings, Topology, db, topology};

use crate::consumer::{Handler, pause, run_session};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("broker: {0}")]
    Broker(#[from] PublishError),
}

/// How often the depth of the queues is read for the metrics.
const QUEUE_DEPTH_INTERVAL: Duration = Duration::from_secs(5);
/// How soon a failed reading is tried again: the first one can come before the session has
/// declared the queues.
const QUEUE_DEPTH_RETRY: Duration = Duration::from_millis(250);

/// Connects to the database, then consumes until `shutdown` resolves; a broken broker session
/// is started again with a growing pause, so outages and consumer cancellations heal by
/// themselves.
pub async fn run(
    settings: &Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    Worker::connect(settings).await?.run(settings, shutdown).await;
    Ok(())
}

/// A worker process's state, built before it consumes, so that its admin listener can report
/// on it.
pub struct Worker {
    handler: Arc<Handler>,
}

impl Worker {
    pub async fn connect(settings: &Settings) -> Result<Self, StartError> {
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
        Ok(Self { handler: Arc::new(Handler::new(db, topology, publisher)) })
    }

    /// What the admin listener reports of this worker: readiness and gauges.
    pub fn status(&self) -> Arc<dyn Status> {
        Arc::new(WorkerStatus(Arc::clone(&self.handler)))
    }

    /// Consumes until `shutdown` resolves.
    pub async fn run(
        self,
        settings: &Settings,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        consume(settings, self.handler, shutdown).await;
    }
}

struct WorkerStatus(Arc<Handler>);

impl Status for WorkerStatus {
    fn readiness(&self) -> BoxFuture<Vec<(&'static str, bool)>> {
        let handler = Arc::clone(&self.0);
        Box::pin(async move {
            let database = admin::check(async { handler.db().ping().await.is_ok() }).await;
            vec![("database", database), ("broker", handler.is_consuming())]
        })
    }

    fn record_gauges(&self) {
        scanhook_shared::metrics::record_database_pool(self.0.db(), "worker");
        self.0.publisher().record_metrics("worker");
    }
}

/// Reads the depth of every queue of the topology into `scanhook_queue_messages`, until
/// `shutdown` turns true.
async fn watch_queue_depths(handler: Arc<Handler>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let next = match record_queue_depths(&handler).await {
            Ok(()) => QUEUE_DEPTH_INTERVAL,
            Err(err) => {
                debug!(error = %err, "could not read the queue depths");
                QUEUE_DEPTH_RETRY
            }
        };
        if pause(next, &mut shutdown).await {
            return;
        }
    }
}

async fn record_queue_depths(handler: &Handler) -> Result<(), PublishError> {
    let channel = handler.publisher().channel().await?;
    for name in handler.topology().queue_names() {
        let count = topology::message_count(&channel, name).await?;
        metrics::gauge!("scanhook_queue_messages", "queue" => name.to_owned())
            .set(f64::from(count));
    }
    Ok(())
}

async fn consume(
    settings: &Settings,
    handler: Arc<Handler>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tokio::spawn(watch_queue_depths(Arc::clone(&handler), stop_rx.clone()));

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
}
