//! Connections to RabbitMQ, and publishing with publisher confirms over pooled channels.

use std::time::Duration;

use deadpool::Runtime;
use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult};
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::config::Secret;

/// Opens a connection that names its process in the broker's management views.
pub async fn connect(url: &Secret, name: &str) -> lapin::Result<Connection> {
    Connection::connect(url.expose(), properties(name)).await
}

pub fn properties(name: &str) -> ConnectionProperties {
    ConnectionProperties::default().with_connection_name(name.into())
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("no channel to the broker: {0}")]
    NoChannel(String),
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("no publisher confirm within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("the broker refused the message (nack)")]
    Nacked,
    #[error("the message could not be routed to queue {0}")]
    Unroutable(String),
}

impl PublishError {
    /// A short, stable name for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoChannel(_) => "no_channel",
            Self::Broker(_) => "broker_error",
            Self::ConfirmTimeout(_) => "confirm_timeout",
            Self::Nacked => "nacked",
            Self::Unroutable(_) => "unroutable",
        }
    }
}

/// Creates confirm-mode channels on the pooled connections.
pub struct ChannelManager {
    connections: deadpool_lapin::Pool,
}

impl managed::Manager for ChannelManager {
    type Type = Channel;
    type Error = PublishError;

    async fn create(&self) -> Result<Channel, PublishError> {
        let connection =
            self.connections.get().await.map_err(|e| PublishError::NoChannel(e.to_string()))?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(channel)
    }

    async fn recycle(&self, channel: &mut Channel, _: &Metrics) -> RecycleResult<PublishError> {
        if channel.status().connected() {
            Ok(())
        } else {
            Err(RecycleError::message("channel is closed"))
        }
    }
}

/// Publishes persistent messages and waits for the broker to confirm each one.
#[derive(Clone)]
pub struct Publisher {
    channels: managed::Pool<ChannelManager>,
    confirm_timeout: Duration,
}

impl Publisher {
    /// A pool of up to `channels` channels over a couple of connections; nothing is opened
    /// until the first publish.
    pub fn new(
        url: &Secret,
        name: &str,
        channels: usize,
        confirm_timeout: Duration,
    ) -> Result<Self, PublishError> {
        let name = name.to_owned();
        let mut pool = deadpool_lapin::PoolConfig::new(2);
        pool.timeouts.create = Some(confirm_timeout);
        pool.timeouts.wait = Some(confirm_timeout);
        let connections =
            deadpool_lapin::Config { url: Some(url.expose().to_owned()), pool: Some(pool) }
                .create_pool(move || properties(&name), Runtime::Tokio1)
                .map_err(|e| PublishError::NoChannel(e.to_string()))?;
        let channels = managed::Pool::builder(ChannelManager { connections })
            .max_size(channels.max(1))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(confirm_timeout))
            .wait_timeout(Some(confirm_timeout))
            .build()
            .map_err(|e| PublishError::NoChannel(e.to_string()))?;
        Ok(Self { channels, confirm_timeout })
    }

    /// Channels of the pool, open and free, as gauges for the metrics.
    pub fn record_metrics(&self, process: &'static str) {
        let status = self.channels.status();
        let gauge = |state: &'static str, value: usize| {
            metrics::gauge!("scanhook_broker_channels", "process" => process, "state" => state)
                .set(value as f64);
        };
        gauge("open", status.size);
        gauge("available", status.available);
        gauge("max", status.max_size);
    }

    /// Whether a channel to the broker can be had now.
    pub async fn is_reachable(&self) -> bool {
        self.channel().await.is_ok_and(|channel| channel.status().connected())
    }

    /// A pooled channel, for declaring the topology or anything else that is not a publish.
    pub async fn channel(&self) -> Result<Object<ChannelManager>, PublishError> {
        self.channels.get().await.map_err(|e| match e {
            PoolError::Backend(inner) => inner,
            other => PublishError::NoChannel(other.to_string()),
        })
    }

    /// Publishes `body` to `queue` through the default exchange as a persistent, mandatory
    /// message and returns once the broker has confirmed it. A channel that failed is not
    /// given back to the pool.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(self.confirm_timeout, async {
            let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
            let properties = properties.with_delivery_mode(2);
            let confirm =
                channel.basic_publish("".into(), queue.into(), options, body, properties).await?;
            confirm.await.map_err(PublishError::from)
        })
        .await;

        let result = match outcome {
            Err(_) => Err(PublishError::ConfirmTimeout(self.confirm_timeout)),
            Ok(Err(err)) => Err(err),
            Ok(Ok(confirmation)) => confirmed(confirmation, queue),
        };
        match &result {
            Ok(()) => metrics::histogram!("scanhook_publish_confirm_seconds")
                .record(started.elapsed().as_secs_f64()),
            Err(err) => {
                metrics::counter!("scanhook_publish_failures_total", "reason" => err.reason())
                    .increment(1);
                drop(Object::take(channel));
            }
        }
        result
    }
}

fn confirmed(confirmation: Confirmation, queue: &str) -> Result<(), PublishError> {
    if confirmation.is_nack() {
        return Err(PublishError::Nacked);
    }
    match confirmation.take_message() {
        Some(_returned) => Err(PublishError::Unroutable(queue.to_owned())),
        None => Ok(()),
    }
}
