//! Operations on the dead-letter queue: list, inspect, replay into the work queue, purge.
//!
//! Messages are taken with `basic.get` and left unacknowledged while the queue is walked; the
//! ones an operation does not act on are returned to the queue at the end, in one `nack`.

use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueuePurgeOptions};
use lapin::types::{DeliveryTag, FieldTable};
use lapin::{BasicProperties, Channel};

use crate::broker::{PublishError, Publisher};
use crate::topology::{HEADER_ATTEMPTS, HEADER_FAILED_AT, HEADER_REASON, header_int, header_str};
use crate::{Topology, topology};

/// Marks a message that an operator sent back to the work queue.
pub const HEADER_REPLAYED_AT: &str = "x-scanhook-replayed-at";

/// One dead-lettered event, as an operator sees it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The AMQP `message_id`, which is the event id for every event the gateway published.
    pub message_id: Option<String>,
    pub reason: Option<String>,
    pub failed_at: Option<String>,
    pub attempts: Option<i64>,
    /// Set by RabbitMQ when it dead-lettered the message itself (delivery limit).
    pub broker_reason: Option<String>,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

impl DeadLetter {
    fn from_delivery(properties: BasicProperties, body: Vec<u8>) -> Self {
        let headers = properties.headers().as_ref();
        Self {
            message_id: properties.message_id().as_ref().map(|id| id.as_str().to_owned()),
            reason: header_str(headers, HEADER_REASON),
            failed_at: header_str(headers, HEADER_FAILED_AT),
            attempts: header_int(headers, HEADER_ATTEMPTS),
            broker_reason: header_str(headers, "x-first-death-reason"),
            properties,
            body,
        }
    }

    /// Whether this is the event `event_id`.
    pub fn is(&self, event_id: &str) -> bool {
        self.message_id.as_deref().is_some_and(|id| id.eq_ignore_ascii_case(event_id))
    }
}

/// Which dead letters an operation applies to.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    Events(Vec<String>),
}

impl Selection {
    fn includes(&self, letter: &DeadLetter) -> bool {
        match self {
            Self::All => true,
            Self::Events(ids) => ids.iter().any(|id| letter.is(id)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("publish: {0}")]
    Publish(#[from] PublishError),
}

pub struct DeadLetters<'a> {
    channel: &'a Channel,
    topology: &'a Topology,
}

impl<'a> DeadLetters<'a> {
    pub fn new(channel: &'a Channel, topology: &'a Topology) -> Self {
        Self { channel, topology }
    }

    /// Messages waiting in the dead-letter queue.
    pub async fn count(&self) -> Result<u32, DeadLetterError> {
        Ok(topology::message_count(self.channel, &self.topology.dead).await?)
    }

    /// Up to `limit` dead letters, oldest first; the queue is left as it was.
    pub async fn list(&self, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let mut walk = self.walk();
        let mut letters = Vec::new();
        while letters.len() < limit {
            let Some((_, letter)) = walk.next().await? else { break };
            letters.push(letter);
        }
        walk.finish().await?;
        Ok(letters)
    }

    /// Sends the selected dead letters back to the work queue, each confirmed there before it
    /// leaves the dead-letter queue. Returns how many were replayed.
    pub async fn replay(
        &self,
        selection: &Selection,
        publisher: &Publisher,
    ) -> Result<usize, DeadLetterError> {
        let mut walk = self.walk();
        let mut replayed = 0;
        while let Some((tag, letter)) = walk.next().await? {
            if !selection.includes(&letter) {
                continue;
            }
            let properties = fresh_attempts(letter.properties);
            publisher.publish(&self.topology.work, &letter.body, properties).await?;
            self.channel.basic_ack(tag, BasicAckOptions::default()).await?;
            replayed += 1;
        }
        walk.finish().await?;
        Ok(replayed)
    }

    /// Deletes the selected dead letters. Returns how many were deleted.
    pub async fn purge(&self, selection: &Selection) -> Result<usize, DeadLetterError> {
        if matches!(selection, Selection::All) {
            let purged = self
                .channel
                .queue_purge(self.topology.dead.as_str().into(), QueuePurgeOptions::default())
                .await?;
            return Ok(purged as usize);
        }
        let mut walk = self.walk();
        let mut purged = 0;
        while let Some((tag, letter)) = walk.next().await? {
            if selection.includes(&letter) {
                self.channel.basic_ack(tag, BasicAckOptions::default()).await?;
                purged += 1;
            }
        }
        walk.finish().await?;
        Ok(purged)
    }

    fn walk(&self) -> Walk<'_> {
        Walk { channel: self.channel, queue: &self.topology.dead, last_tag: None }
    }
}

/// A pass over the queue holding every message it has taken until `finish`.
struct Walk<'a> {
    channel: &'a Channel,
    queue: &'a str,
    last_tag: Option<DeliveryTag>,
}

impl Walk<'_> {
    async fn next(&mut self) -> Result<Option<(DeliveryTag, DeadLetter)>, DeadLetterError> {
        let got =
            self.channel.basic_get(self.queue.into(), BasicGetOptions { no_ack: false }).await?;
        Ok(got.map(|message| {
            let delivery = message.delivery;
            self.last_tag = Some(delivery.delivery_tag);
            (delivery.delivery_tag, DeadLetter::from_delivery(delivery.properties, delivery.data))
        }))
    }

    /// Returns whatever was taken and not acknowledged to the queue.
    async fn finish(self) -> Result<(), DeadLetterError> {
        if let Some(tag) = self.last_tag {
            let options = BasicNackOptions { multiple: true, requeue: true };
            self.channel.basic_nack(tag, options).await?;
        }
        Ok(())
    }
}

/// The message as the gateway first published it, plus when it was replayed: the retry count
/// starts again from zero.
fn fresh_attempts(properties: BasicProperties) -> BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(old) = properties.headers() {
        for (name, value) in old.inner() {
            let name = name.as_str();
            let ours = [HEADER_ATTEMPTS, HEADER_REASON, HEADER_FAILED_AT].contains(&name);
            if !ours
                && !name.starts_with("x-death")
                && !name.starts_with("x-first-death")
                && !name.starts_with("x-last-death")
            {
                headers.insert(name.into(), value.clone());
            }
        }
    }
    let now = chrono::Utc::now().to_rfc3339();
    headers.insert(HEADER_REPLAYED_AT.into(), crate::topology::long_string(&now));
    properties.with_headers(headers)
}
