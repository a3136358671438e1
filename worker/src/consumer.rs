//! Consuming the work queue: one broker session at a time, reconnecting when it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use sea_orm::DatabaseConnection;
use tokio::sync::watch;
use tracing::{Instrument, error, info, warn};

use scanhook_shared::broker::{self, PublishError, Publisher};
use scanhook_shared::config::millis;
use scanhook_shared::topology::{
    HEADER_ATTEMPTS, HEADER_FAILED_AT, HEADER_REASON, HEADER_REQUEST_ID, header_int, header_str,
    long_string,
};
use scanhook_shared::trace::{TRACEPARENT, TraceContext};
use scanhook_shared::{ScanEvent, Settings, Topology, db};

use crate::apply::{Applied, ApplyError, Outcome, apply_batch};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker ended the consumer")]
    ConsumerEnded,
    #[error("no broker session within {0:?}")]
    Timeout(Duration),
}

/// What happens to a delivery once it has been looked at.
enum Decision {
    /// Done with: `applied` or `duplicate`.
    Ack(&'static str),
    Retry {
        queue: String,
        attempts: u32,
        reason: String,
    },
    DeadLetter {
        attempts: u32,
        reason: String,
    },
}

/// A delivery, read: its event (unless undecodable), its attempts so far, and its span.
struct Item {
    delivery: Delivery,
    attempts: u32,
    span: tracing::Span,
    event: Option<ScanEvent>,
    /// Set at once for an undecodable message, otherwise once the batch is applied.
    decision: Option<Decision>,
}

impl Item {
    fn read(delivery: Delivery) -> Self {
        let headers = delivery.properties.headers().as_ref();
        let attempts =
            header_int(headers, HEADER_ATTEMPTS).and_then(|n| u32::try_from(n).ok()).unwrap_or(0);
        let request_id = header_str(headers, HEADER_REQUEST_ID).unwrap_or_default();
        let trace = TraceContext::continue_from(
            header_str(headers, TRACEPARENT).as_deref().map(str::as_bytes),
        );
        let span = tracing::info_span!(
            "event",
            request_id = %request_id,
            trace_id = %trace.trace_id_hex(),
            span_id = %trace.span_id_hex(),
            event_id = tracing::field::Empty,
            patient_id = tracing::field::Empty,
            case_id = tracing::field::Empty,
        );
        match ScanEvent::from_json(&delivery.data) {
            Err(err) => {
                span.in_scope(
                    || warn!(outcome = "dead_lettered", error = %err, "undecodable message"),
                );
                let reason = format!("undecodable event: {err}");
                Self {
                    delivery,
                    attempts,
                    span,
                    event: None,
                    decision: Some(Decision::DeadLetter { attempts, reason }),
                }
            }
            Ok(event) => {
                span.record("event_id", tracing::field::display(event.event_id));
                span.record("patient_id", event.patient_id.as_str());
                span.record("case_id", event.case_id);
                Self { delivery, attempts, span, event: Some(event), decision: None }
            }
        }
    }
}

/// Handles deliveries; shared by the concurrent tasks of one session.
pub struct Handler {
    db: DatabaseConnection,
    topology: Topology,
    publisher: Publisher,
    /// Whether a broker session is consuming now, for readiness.
    consuming: AtomicBool,
}

impl Handler {
    pub fn new(db: DatabaseConnection, topology: Topology, publisher: Publisher) -> Self {
        Self { db, topology, publisher, consuming: AtomicBool::new(false) }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Relaxed);
        metrics::gauge!("scanhook_worker_consuming").set(if consuming { 1.0 } else { 0.0 });
    }

    /// Applies a batch of deliveries in one transaction, then settles each: acknowledged once
    /// the commit is done, or forwarded to a retry or the dead-letter queue first.
    async fn handle_batch(&self, deliveries: Vec<Delivery>) {
        let mut items: Vec<Item> = deliveries.into_iter().map(Item::read).collect();
        metrics::histogram!("scanhook_worker_batch_events").record(items.len() as f64);

        let events: Vec<&ScanEvent> = items.iter().filter_map(|item| item.event.as_ref()).collect();
        let started = Instant::now();
        let applied = self.apply(&events).await;
        let elapsed = started.elapsed();
        drop(events);

        let mut index = 0;
        for item in &mut items {
            if item.event.is_some() {
                let outcome = match &applied {
                    Ok(outcomes) => &outcomes[index],
                    Err(failure) => failure,
                };
                index += 1;
                item.decision = Some(item.span.in_scope(|| self.decide(item, outcome, elapsed)));
            }
        }
        futures_util::future::join_all(items.into_iter().map(|item| {
            let decision = item.decision.expect("every delivery has a decision");
            self.settle(item.delivery, decision).instrument(item.span)
        }))
        .await;
    }

    /// Each event's outcome, or the one failure of them all. When the batch's transaction fails
    /// on something other than an outage, the cause may be one event the database refuses, so
    /// each is tried again alone, and only what fails alone goes to a retry.
    async fn apply(&self, events: &[&ScanEvent]) -> Result<Vec<Outcome>, Outcome> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        match apply_batch(&self.db, events).await {
            Ok(outcomes) => Ok(outcomes),
            Err(err) if events.len() > 1 && !db::is_unavailable(&err) => {
                warn!(error = %err, events = events.len(), "batch failed; applying its events one by one");
                let mut outcomes = Vec::with_capacity(events.len());
                let mut unreachable: Option<String> = None;
                for event in events {
                    if let Some(reason) = &unreachable {
                        // No use waiting for a connection once more, event after event.
                        outcomes.push(Err(ApplyError::Unreachable(reason.clone())));
                        continue;
                    }
                    outcomes.push(match apply_batch(&self.db, &[*event]).await {
                        Ok(mut one) => one.pop().expect("one outcome per event"),
                        Err(err) => {
                            if db::is_unavailable(&err) {
                                unreachable = Some(err.to_string());
                            }
                            Err(ApplyError::alone(err))
                        }
                    });
                }
                Ok(outcomes)
            }
            Err(err) if events.len() == 1 => Err(Err(ApplyError::alone(err))),
            Err(err) => Err(Err(ApplyError::Database(err))),
        }
    }

    fn decide(&self, item: &Item, outcome: &Outcome, elapsed: Duration) -> Decision {
        let event = item.event.as_ref().expect("decided on an event");
        let attempts = item.attempts;
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        let lag_ms = (Utc::now() - event.received_at).num_milliseconds();
        metrics::histogram!("scanhook_event_processing_seconds").record(elapsed.as_secs_f64());

        match outcome {
            Ok(Applied::Recorded) => {
                info!(
                    outcome = "applied",
                    scan_id = event.scan_id,
                    attempts,
                    latency_ms,
                    lag_ms,
                    "event"
                );
                metrics::histogram!("scanhook_event_lag_seconds")
                    .record((lag_ms.max(0) as f64) / 1000.0);
                Decision::Ack("applied")
            }
            Ok(Applied::Duplicate) => {
                info!(outcome = "duplicate", attempts, latency_ms, "event");
                Decision::Ack("duplicate")
            }
            Err(err) if err.is_permanent() => {
                warn!(outcome = "dead_lettered", error = %err, attempts, "event");
                Decision::DeadLetter { attempts: attempts + 1, reason: err.to_string() }
            }
            Err(err) => {
                // TODO: while the database is unreachable every event taken goes to its retry,
                // so an outage longer than the whole retry schedule walks the backlog into the
                // dead-letter queue (replayable); consuming could pause until the database
                // answers instead, keeping the attempts for failures of the events themselves.
                let attempts = attempts + 1;
                match self.topology.retry_after(attempts) {
                    Some(retry) => {
                        warn!(
                            outcome = "retry",
                            error = %err,
                            outage = err.is_outage(),
                            attempts,
                            delay_ms = retry.delay.as_millis() as u64,
                            "event"
                        );
                        Decision::Retry {
                            queue: retry.name.clone(),
                            attempts,
                            reason: err.to_string(),
                        }
                    }
                    None => {
                        error!(outcome = "dead_lettered", error = %err, attempts, "event: retries used up");
                        Decision::DeadLetter {
                            attempts,
                            reason: format!("gave up after {attempts} attempts: {err}"),
                        }
                    }
                }
            }
        }
    }

    /// Forwards the message where the decision sends it, then acknowledges it; the original is
    /// only let go once its copy is confirmed by the broker.
    async fn settle(&self, delivery: Delivery, decision: Decision) {
        let forwarded = match &decision {
            Decision::Ack(_) => Ok(()),
            Decision::Retry { queue, attempts, reason } => {
                self.forward(&delivery, queue, *attempts, reason, false).await
            }
            Decision::DeadLetter { attempts, reason } => {
                self.forward(&delivery, &self.topology.dead, *attempts, reason, true).await
            }
        };
        let settled = match forwarded {
            Ok(()) => {
                let outcome = match &decision {
                    Decision::Ack(outcome) => *outcome,
                    Decision::Retry { .. } => "retried",
                    Decision::DeadLetter { .. } => "dead_lettered",
                };
                metrics::counter!("scanhook_events_total", "outcome" => outcome).increment(1);
                delivery.ack(BasicAckOptions::default()).await
            }
            Err(err) => {
                // Back to the queue; the queue's delivery limit stops an endless loop.
                error!(error = %err, "could not forward the event; returning it to the queue");
                delivery
                    .nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() })
                    .await
            }
        };
        if let Err(err) = settled {
            // The channel is gone; the broker will deliver the message again.
            warn!(error = %err, "could not settle the delivery");
        }
    }

    async fn forward(
        &self,
        delivery: &Delivery,
        queue: &str,
        attempts: u32,
        reason: &str,
        dead: bool,
    ) -> Result<(), PublishError> {
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(HEADER_ATTEMPTS.into(), AMQPValue::LongLongInt(attempts.into()));
        headers.insert(HEADER_REASON.into(), long_string(reason));
        if dead {
            headers.insert(HEADER_FAILED_AT.into(), long_string(&Utc::now().to_rfc3339()));
        }
        let properties = delivery.properties.clone().with_headers(headers);
        self.publisher.publish(queue, &delivery.data, properties).await
    }
}

/// Consumes until `shutdown` turns true (then returns `Ok`) or the session breaks.
pub async fn run_session(
    settings: &Settings,
    handler: Arc<Handler>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SessionError> {
    let limit = millis(settings.amqp.connect_timeout_ms);
    let opening = tokio::time::timeout(limit, async {
        let connection = broker::connect(&settings.amqp.url, "scanhook-worker").await?;
        let channel = connection.create_channel().await?;
        handler.topology().declare(&channel, settings.amqp.delivery_limit).await?;
        channel.basic_qos(settings.worker.prefetch, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                handler.topology().work.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((connection, channel, consumer))
    });
    let (connection, channel, consumer) =
        opening.await.map_err(|_| SessionError::Timeout(limit))??;
    info!(queue = %handler.topology().work, prefetch = settings.worker.prefetch, "consuming");
    handler.set_consuming(true);

    let stop = {
        let mut shutdown = shutdown.clone();
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        }
    };
    // Deliveries are taken together, up to the batch size: full batches when a backlog waits;
    // otherwise what arrives within `batch_wait_ms` of a batch's first event.
    let deliveries = consumer.take_until(stop);
    let (size, wait) = (settings.worker.batch_size, settings.worker.batch_wait_ms);
    let chunks = if wait == 0 {
        deliveries.ready_chunks(size).boxed()
    } else {
        tokio_stream::StreamExt::chunks_timeout(deliveries, size, Duration::from_millis(wait))
            .boxed()
    };
    let processing = chunks.for_each_concurrent(settings.worker.concurrency, |chunk| {
        let handler = Arc::clone(&handler);
        async move {
            let mut deliveries = Vec::with_capacity(chunk.len());
            for delivery in chunk {
                match delivery {
                    Ok(delivery) => deliveries.push(delivery),
                    Err(err) => warn!(error = %err, "consumer error"),
                }
            }
            if !deliveries.is_empty() {
                handler.handle_batch(deliveries).await;
            }
        }
    });
    let deadline = async {
        let _ = shutdown.wait_for(|stop| *stop).await;
        tokio::time::sleep(millis(settings.worker.shutdown_timeout_ms)).await;
    };
    tokio::select! {
        () = processing => {},
        () = deadline => warn!("shutdown deadline passed; unfinished events go back to the queue"),
    }

    handler.set_consuming(false);
    let stopping = *shutdown.borrow();
    // Closing returns every unacknowledged message to the queue for another worker.
    let _ = channel.close(200, "bye".into()).await;
    let _ = connection.close(200, "bye".into()).await;
    if stopping { Ok(()) } else { Err(SessionError::ConsumerEnded) }
}

/// Waits `delay`, or less if shutdown is asked for meanwhile; `true` when it was.
pub async fn pause(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::time::timeout(delay, shutdown.wait_for(|stop| *stop)).await;
    matches!(stopped, Ok(Ok(_)))
}
