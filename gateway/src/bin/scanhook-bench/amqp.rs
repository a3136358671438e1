//! Row 2, the broker ceiling, and the backlog of row 5.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use uuid::Uuid;

use scanhook_shared::broker;
use scanhook_shared::topology::long_string;
use scanhook_shared::{Settings, Topology};

use crate::{Load, SplitMix, event, signer, sql};

/// The properties the gateway publishes with (gateway/src/app.rs), persistent.
fn properties(message_id: Uuid) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        scanhook_shared::topology::HEADER_REQUEST_ID.into(),
        long_string(&Uuid::now_v7().to_string()),
    );
    BasicProperties::default()
        .with_message_id(message_id.to_string().into())
        .with_content_type("application/json".into())
        .with_timestamp(u64::try_from(chrono::Utc::now().timestamp()).unwrap_or_default())
        .with_headers(headers)
        .with_delivery_mode(2)
}

const MANDATORY: BasicPublishOptions = BasicPublishOptions { mandatory: true, immediate: false };

async fn confirm_channel(connection: &Connection) -> Result<Channel, String> {
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    channel.confirm_select(ConfirmSelectOptions::default()).await.map_err(|e| e.to_string())?;
    Ok(channel)
}

async fn confirmed(confirm: PublisherConfirm) -> Result<(), String> {
    let confirmation = confirm.await.map_err(|e| e.to_string())?;
    if confirmation.is_nack() {
        return Err("the broker nacked a message".into());
    }
    if confirmation.take_message().is_some() {
        return Err("a message was returned unroutable".into());
    }
    Ok(())
}

pub async fn ceiling(
    settings: &Settings,
    publishers: usize,
    duration: f64,
    size: Option<usize>,
    connections: usize,
) -> Result<(), String> {
    let (signer_name, _) = signer(settings).unwrap_or_else(|_| ("secret-1".into(), String::new()));
    let sample = event(123, 123, SplitMix::new(1).scan_id(), &signer_name)?.to_json();
    let size = size.unwrap_or(sample.len());
    let payload = vec![b'x'; size];

    let mut links = Vec::new();
    for _ in 0..connections.max(1) {
        links.push(
            broker::connect(&settings.amqp.url, "scanhook-bench")
                .await
                .map_err(|e| format!("cannot reach the broker: {e}"))?,
        );
    }
    let queue = format!("scanhook-bench.ceiling.{}", Uuid::now_v7());
    let admin = links[0].create_channel().await.map_err(|e| e.to_string())?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), long_string("quorum"));
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    admin
        .queue_declare(queue.as_str().into(), options, arguments)
        .await
        .map_err(|e| e.to_string())?;

    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let published = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..publishers.max(1) {
        let channel = confirm_channel(&links[i % links.len()]).await?;
        let (queue, payload) = (queue.clone(), payload.clone());
        let (counting, stop, published) = (counting.clone(), stop.clone(), published.clone());
        tasks.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        MANDATORY,
                        &payload,
                        properties(Uuid::now_v7()),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                confirmed(confirm).await?;
                if counting.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<(), String>(())
        });
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    counting.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(duration)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(err)) => failure = Some(err),
            Err(err) => failure = Some(err.to_string()),
        }
    }
    let _ = admin.queue_delete(queue.as_str().into(), QueueDeleteOptions::default()).await;
    for link in &links {
        let _ = link.close(200, "done".into()).await;
    }
    if let Some(err) = failure {
        return Err(format!("a publisher failed: {err}"));
    }
    let count = published.load(Ordering::Relaxed);
    println!(
        "broker_ceiling_msgs_per_s={:.0} messages={count} seconds={elapsed:.2} publishers={} connections={} size={size}",
        count as f64 / elapsed,
        publishers.max(1),
        links.len(),
    );
    Ok(())
}

/// Events for the load patients, published as the gateway would (same body, same properties)
/// over a few channels with many confirms outstanding each.
pub async fn backlog(settings: &Settings, events: usize, load: &Load) -> Result<(), String> {
    const CHANNELS: usize = 4;
    const WINDOW: usize = 256;
    let (signer_name, _) = signer(settings).unwrap_or_else(|_| ("secret-1".into(), String::new()));
    let cases = Arc::new(sql::case_ids(settings, load).await?);
    let connection = broker::connect(&settings.amqp.url, "scanhook-bench")
        .await
        .map_err(|e| format!("cannot reach the broker: {e}"))?;
    let topology = Topology::new(&settings.amqp.queue, &settings.retry_delays());
    let admin = connection.create_channel().await.map_err(|e| e.to_string())?;
    topology.declare(&admin, settings.amqp.delivery_limit).await.map_err(|e| e.to_string())?;

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CHANNELS {
        let channel = confirm_channel(&connection).await?;
        let (cases, queue, signer_name) =
            (cases.clone(), topology.work.clone(), signer_name.clone());
        tasks.spawn(async move {
            let mut ids = SplitMix::new(0xb4c1_0900 + c as u64);
            let mut pending = VecDeque::with_capacity(WINDOW);
            for j in (c..events).step_by(CHANNELS) {
                let (k, case_id) = cases[j % cases.len()];
                let event = event(k, case_id, ids.scan_id(), &signer_name)?;
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        MANDATORY,
                        &event.to_json(),
                        properties(event.event_id),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                pending.push_back(confirm);
                if pending.len() >= WINDOW
                    && let Some(oldest) = pending.pop_front()
                {
                    confirmed(oldest).await?;
                }
            }
            for confirm in pending {
                confirmed(confirm).await?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = connection.close(200, "done".into()).await;
    println!(
        "backlog_events={events} patients={} seconds={elapsed:.2} publish_per_s={:.0} queue={}",
        cases.len(),
        events as f64 / elapsed,
        topology.work
    );
    Ok(())
}

/// Empties the work queue.
pub async fn purge(settings: &Settings) -> Result<(), String> {
    let connection = broker::connect(&settings.amqp.url, "scanhook-bench")
        .await
        .map_err(|e| format!("cannot reach the broker: {e}"))?;
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    let topology = Topology::new(&settings.amqp.queue, &settings.retry_delays());
    topology.declare(&channel, settings.amqp.delivery_limit).await.map_err(|e| e.to_string())?;
    let purged = channel
        .queue_purge(topology.work.as_str().into(), QueuePurgeOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let _ = connection.close(200, "done".into()).await;
    println!("purged={purged} queue={}", topology.work);
    Ok(())
}

/// Messages ready in the work queue (a quorum queue counts the ready ones only).
pub async fn ready(settings: &Settings) -> Result<u32, String> {
    let connection = broker::connect(&settings.amqp.url, "scanhook-bench")
        .await
        .map_err(|e| format!("cannot reach the broker: {e}"))?;
    let channel = connection.create_channel().await.map_err(|e| e.to_string())?;
    let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
    let queue = channel
        .queue_declare(settings.amqp.queue.as_str().into(), options, FieldTable::default())
        .await
        .map_err(|e| e.to_string())?;
    let _ = connection.close(200, "done".into()).await;
    Ok(queue.message_count())
}
