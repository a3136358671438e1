//! The queues both binaries declare, and the message headers they agree on.
//!
//! Every queue is a durable quorum queue, so it is replicated when RabbitMQ runs as a cluster:
//! - the work queue, which dead-letters to the dead-letter queue once a message has been
//!   delivered `delivery_limit` times without an acknowledgement (a message that crashes workers);
//! - one delay queue per retry delay, whose messages expire after the delay back into the work
//!   queue; the worker publishes a failed event there instead of sleeping;
//! - the dead-letter queue, where events that can never be applied wait for an operator.

use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Failed processing attempts an event has behind it.
pub const HEADER_ATTEMPTS: &str = "x-scanhook-attempts";
/// Why an event was dead-lettered.
pub const HEADER_REASON: &str = "x-scanhook-reason";
/// When an event was dead-lettered (RFC 3339).
pub const HEADER_FAILED_AT: &str = "x-scanhook-failed-at";
/// The request id of the notification the event came from, as the gateway gave it.
pub const HEADER_REQUEST_ID: &str = "x-request-id";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub work: String,
    pub dead: String,
    pub retries: Vec<RetryQueue>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryQueue {
    pub name: String,
    pub delay: Duration,
}

impl Topology {
    /// Names everything after the work queue `queue`. A delay queue carries its delay in its
    /// name, so that changing the configured delays declares new queues instead of clashing
    /// with the arguments of the old ones.
    pub fn new(queue: &str, retry_delays: &[Duration]) -> Self {
        let retries = retry_delays
            .iter()
            .map(|delay| RetryQueue {
                name: format!("{queue}.retry.{}ms", delay.as_millis()),
                delay: *delay,
            })
            .collect();
        Self { work: queue.to_owned(), dead: format!("{queue}.dead"), retries }
    }

    /// The delay queue for an event that has failed `attempts` times, or `None` when the
    /// retries are used up.
    pub fn retry_after(&self, attempts: u32) -> Option<&RetryQueue> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        self.retries.get(index)
    }

    /// Declares every queue; declaring what already exists with the same arguments is a no-op.
    pub async fn declare(&self, channel: &Channel, delivery_limit: u32) -> lapin::Result<()> {
        let mut work = quorum_arguments();
        work.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(delivery_limit.into()));
        dead_letter_to(&mut work, &self.dead);
        declare(channel, &self.work, work).await?;

        for retry in &self.retries {
            let mut arguments = quorum_arguments();
            let ttl = i64::try_from(retry.delay.as_millis()).unwrap_or(i64::MAX);
            arguments.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            dead_letter_to(&mut arguments, &self.work);
            declare(channel, &retry.name, arguments).await?;
        }

        declare(channel, &self.dead, quorum_arguments()).await
    }

    /// Every queue name, for clean-up and listings.
    pub fn queue_names(&self) -> Vec<&str> {
        let mut names = vec![self.work.as_str(), self.dead.as_str()];
        names.extend(self.retries.iter().map(|r| r.name.as_str()));
        names
    }
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    arguments
}

/// Dead-letters through the default exchange straight into `queue`, at least once: RabbitMQ
/// keeps the message until the target queue has confirmed it.
fn dead_letter_to(arguments: &mut FieldTable, queue: &str) {
    arguments.insert("x-dead-letter-exchange".into(), long_string(""));
    arguments.insert("x-dead-letter-routing-key".into(), long_string(queue));
    arguments.insert("x-dead-letter-strategy".into(), long_string("at-least-once"));
    arguments.insert("x-overflow".into(), long_string("reject-publish"));
}

async fn declare(channel: &Channel, name: &str, arguments: FieldTable) -> lapin::Result<()> {
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(ShortString::from(name), options, arguments).await?;
    Ok(())
}

/// Messages ready in `queue`, as its leader counts them; the queue must exist.
pub async fn message_count(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let declared = channel.queue_declare(ShortString::from(queue), options, FieldTable::default());
    Ok(declared.await?.message_count())
}

pub fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// A header's value as an integer, whatever integer type the sender used.
pub fn header_int(headers: Option<&FieldTable>, name: &str) -> Option<i64> {
    match headers?.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some((*v).into()),
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortInt(v) => Some((*v).into()),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::LongInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::LongLongInt(v) => Some(*v),
        _ => None,
    }
}

/// A header's value as text, for string headers.
pub fn header_str(headers: Option<&FieldTable>, name: &str) -> Option<String> {
    match headers?.inner().get(name)? {
        AMQPValue::LongString(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        AMQPValue::ShortString(v) => Some(v.as_str().to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_work_queue() {
        let topology =
            Topology::new("t.scans", &[Duration::from_secs(1), Duration::from_millis(250)]);
        assert_eq!(topology.dead, "t.scans.dead");
        assert_eq!(topology.retries[0].name, "t.scans.retry.1000ms");
        assert_eq!(topology.retries[1].name, "t.scans.retry.250ms");
    }

    #[test]
    fn retry_after_walks_the_delays_then_stops() {
        let topology = Topology::new("q", &[Duration::from_secs(1), Duration::from_secs(10)]);
        assert_eq!(topology.retry_after(0), None);
        assert_eq!(topology.retry_after(1).map(|r| r.delay), Some(Duration::from_secs(1)));
        assert_eq!(topology.retry_after(2).map(|r| r.delay), Some(Duration::from_secs(10)));
        assert_eq!(topology.retry_after(3), None);
    }
}
