//! Delivery guarantees that can be shown without stopping shared services: sender idempotency,
//! order between updates of one case, and the retry schedule carried by RabbitMQ.

mod common;

use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use serde_json::json;
use uuid::Uuid;

use scanhook_shared::Secret;
use scanhook_shared::topology::{HEADER_ATTEMPTS, HEADER_REASON, header_int, header_str};

use common::*;

const PATIENT: &str = "605914";
const ACCEPTED: &str = "Scan update processed successfully";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_request_with_the_same_key_is_one_event() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    env.insert_case("other", "CASE-2").await;
    let gateway = env.spawn_gateway().await;
    let worker = env.spawn_worker();

    let send = |patient: &'static str, header: &'static str, key: &'static str| {
        let post = Post::signed(patient, r#"{"scan_id":5}"#).header(header, key);
        post.send(&gateway)
    };
    let first = send(PATIENT, "idempotency-key", "delivery-77").await;
    first.assert(202, true, ACCEPTED);
    let again = send(PATIENT, "idempotency-key", "delivery-77").await;
    again.assert(202, true, ACCEPTED);
    assert_eq!(first.event_id(), again.event_id());
    let by_webhook_id = send(PATIENT, "x-webhook-id", "delivery-77").await;
    assert_eq!(by_webhook_id.event_id(), first.event_id());
    let other_patient = send("other", "idempotency-key", "delivery-77").await;
    assert_ne!(other_patient.event_id(), first.event_id());
    let unkeyed = Post::signed(PATIENT, r#"{"scan_id":5}"#).send(&gateway).await;
    assert_ne!(unkeyed.event_id(), first.event_id());

    // The unkeyed request was sent last; once it and the other patient's are applied, the
    // three copies of the keyed one have been consumed too (one worker drains in order).
    wait_applied(&env, unkeyed.event_id(), Duration::from_secs(10)).await;
    wait_applied(&env, other_patient.event_id(), Duration::from_secs(10)).await;
    wait_applied(&env, first.event_id(), Duration::from_secs(10)).await;
    assert_eq!(activity_count(&env, first.event_id()).await, 1);
    assert_eq!(env.count("SELECT count(*) FROM activity_logs").await, 3);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_idempotency_key_is_400() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let long = "k".repeat(256);
    for key in ["has space", long.as_str()] {
        let reply = Post::signed(PATIENT, r#"{"scan_id":5}"#)
            .header("idempotency-key", key)
            .send(&gateway)
            .await;
        assert_eq!(reply.status.as_u16(), 400, "{reply:?}");
        assert!(reply.message().starts_with("Invalid Idempotency-Key header"), "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_applied_out_of_order_leave_the_case_on_the_later_one() {
    let env = TestEnv::with(|s| {
        s.worker.concurrency = 1;
        s.worker.prefetch = 1;
    })
    .await;
    let case_id = env.insert_case(PATIENT, "CASE-1").await;
    // PostgreSQL keeps microseconds.
    let earlier_at = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let later_at = earlier_at + chrono::Duration::milliseconds(5);
    let (earlier, later) = (Uuid::now_v7(), Uuid::now_v7());

    // The later update is consumed first, as after a retry or with two workers.
    env.publish_raw(&event(later, case_id, 2, later_at), properties_for(later)).await;
    env.publish_raw(&event(earlier, case_id, 1, earlier_at), properties_for(earlier)).await;
    let worker = env.spawn_worker();
    wait_applied(&env, earlier, Duration::from_secs(10)).await;
    wait_applied(&env, later, Duration::from_secs(10)).await;

    let on_later = env
        .count(&format!(
            "SELECT count(*) FROM cases WHERE id = {case_id} AND latest_scan_id = 2 \
             AND scan_updated_at = '{}'",
            later_at.to_rfc3339()
        ))
        .await;
    assert_eq!(on_later, 1, "the case shows the update received last");
    assert_eq!(env.count("SELECT count(*) FROM activity_logs").await, 2);
    assert_eq!(env.count("SELECT count(*) FROM scans").await, 2);
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_retry_waits_its_delay_in_rabbitmq_then_the_event_is_dead_lettered() {
    let delays_ms = [400u64, 800, 1200];
    let env = TestEnv::with(|s| s.worker.retry_delays_ms = delays_ms.to_vec()).await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let (link, db_url) = relay(env.settings.database.url.expose()).await;
    let mut worker_settings = env.settings.clone();
    worker_settings.database.url = Secret::new(db_url);
    let worker = spawn_worker(worker_settings);
    link.cut();

    let reply = Post::signed(PATIENT, r#"{"scan_id":1}"#).send(&gateway).await;
    reply.assert(202, true, ACCEPTED);

    // Watch each delay queue: when the event enters it and when it leaves.
    let (connection, channel) = env.broker().await;
    let mut spans = Vec::new();
    for retry in &env.topology.retries {
        let depth = || async {
            channel
                .queue_declare(
                    retry.name.as_str().into(),
                    QueueDeclareOptions { passive: true, ..Default::default() },
                    Default::default(),
                )
                .await
                .expect("delay queue")
                .message_count()
        };
        let deadline = Duration::from_secs(15);
        eventually(deadline, || async { (depth().await == 1).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("the event never reached {}", retry.name));
        let entered = Instant::now();
        eventually(deadline, || async { (depth().await == 0).then_some(()) })
            .await
            .unwrap_or_else(|| panic!("the event never left {}", retry.name));
        spans.push(entered.elapsed());
    }
    connection.close(200, "done".into()).await.ok();

    let dead = env.take_dead_letter(Duration::from_secs(15)).await.expect("dead-lettered");
    let headers = dead.delivery.properties.headers().as_ref();
    let attempts = header_int(headers, HEADER_ATTEMPTS);
    let reason = header_str(headers, HEADER_REASON).unwrap_or_default();
    for (delay, spent) in delays_ms.iter().zip(&spans) {
        println!("retry delay {delay} ms: held {} ms", spent.as_millis());
        let spent = spent.as_millis() as u64;
        assert!(spent + 100 >= *delay && spent <= delay + 400, "held {spent} ms for {delay} ms");
    }
    assert_eq!(attempts, Some(delays_ms.len() as i64 + 1));
    assert!(reason.starts_with("gave up after 4 attempts"), "{reason}");
    assert_eq!(activity_count(&env, reply.event_id()).await, 0);
    worker.stop().await;
}

fn event(event_id: Uuid, case_id: i64, scan_id: i64, at: chrono::DateTime<chrono::Utc>) -> Vec<u8> {
    event_of(PATIENT, case_id, event_id, scan_id, at, json!({"scan_id": scan_id}))
}

fn event_of(
    patient_id: &str,
    case_id: i64,
    event_id: Uuid,
    scan_id: i64,
    at: chrono::DateTime<chrono::Utc>,
    payload: serde_json::Value,
) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": event_id,
        "patient_id": patient_id,
        "case_id": case_id,
        "case_number": format!("CASE-{case_id}"),
        "scan_id": scan_id,
        "payload": payload,
        "received_at": at,
    }))
    .expect("json")
}

/// A backlog that the worker takes in batches: within a batch, repeated event ids are applied
/// once, a case moves to its latest update whatever the order, events of a closed or missing
/// case and unstorable values are dead-lettered at once, and an event the database refuses makes
/// its batch be applied again one event at a time, so that only that event is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_applies_what_it_can_and_sets_aside_each_event_that_fails() {
    let env = TestEnv::with(|s| {
        s.worker.concurrency = 1;
        s.worker.prefetch = 400;
        s.worker.batch_size = 64;
        s.worker.retry_delays_ms = vec![50, 50];
    })
    .await;
    let open = env.insert_case(PATIENT, "CASE-OPEN").await;
    let closed = env.insert_case("605915", "CASE-CLOSED").await;
    let other = env.insert_case("605916", "CASE-OTHER").await;
    env.exec(&format!("UPDATE cases SET status = 'closed' WHERE id = {closed}")).await;

    let start = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 6);
    let at = |n: i64| start + chrono::Duration::milliseconds(n);
    // 300 updates of one case, newest first, each of them twice.
    let updates: Vec<(Uuid, i64)> = (1..=300).map(|scan| (Uuid::now_v7(), scan)).collect();
    let (poison_id, nul_id, closed_id) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let (missing_id, surrogate_id) = (Uuid::now_v7(), Uuid::now_v7());
    let (connection, channel) = env.broker().await;
    let publish = |body: Vec<u8>, id: Uuid| {
        let channel = channel.clone();
        let env = &env;
        async move { env.publish_raw_on(&channel, &body, properties_for(id)).await }
    };
    for (i, (id, scan)) in updates.iter().rev().enumerate() {
        let body = event_of(PATIENT, open, *id, *scan, at(*scan), json!({"scan_id": scan}));
        publish(body.clone(), *id).await;
        publish(body, *id).await;
        if i == 100 {
            // A lone surrogate: valid JSON text that PostgreSQL's jsonb refuses, so the batch's
            // insert fails and its events are applied one by one.
            let body =
                event_of(PATIENT, other, surrogate_id, 1, at(0), json!({"note": "SURROGATE"}));
            let body = String::from_utf8(body).expect("utf-8").replace("SURROGATE", "\\ud800");
            publish(body.into_bytes(), surrogate_id).await;
            // A patient id PostgreSQL cannot store, found before any statement.
            let body = event_of("605\u{0}916", other, poison_id, 1, at(0), json!({"scan_id": 1}));
            publish(body, poison_id).await;
            let body = event_of(PATIENT, open, nul_id, 7, at(0), json!({"note": "a\u{0}b"}));
            publish(body, nul_id).await;
            let body = event_of("605915", closed, closed_id, 1, at(0), json!({"scan_id": 1}));
            publish(body, closed_id).await;
            let body = event_of(PATIENT, other + 1000, missing_id, 1, at(0), json!({"scan_id": 1}));
            publish(body, missing_id).await;
        }
    }
    connection.close(200, "done".into()).await.ok();

    let worker = env.spawn_worker();
    let logs_sql = format!("SELECT count(*) FROM activity_logs WHERE case_id = {open}");
    eventually(Duration::from_secs(20), || async {
        (env.count(&logs_sql).await == 300).then_some(())
    })
    .await
    .expect("all 300 updates applied");
    let mut reasons = Vec::new();
    for _ in 0..5 {
        let dead = env.take_dead_letter(Duration::from_secs(20)).await.expect("a dead letter");
        let headers = dead.delivery.properties.headers().as_ref();
        let id = dead.delivery.properties.message_id().as_ref().map(|id| id.to_string());
        reasons
            .push((id.unwrap_or_default(), header_str(headers, HEADER_REASON).unwrap_or_default()));
    }
    reasons.sort();
    let reason_of = |id: Uuid| {
        reasons
            .iter()
            .find(|(m, _)| *m == id.to_string())
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    };
    assert!(reason_of(poison_id).contains("text field"), "{reasons:?}");
    assert!(reason_of(surrogate_id).contains("database refused a value"), "{reasons:?}");
    assert!(reason_of(nul_id).contains("NUL character"), "{reasons:?}");
    assert!(reason_of(closed_id).contains("no longer active"), "{reasons:?}");
    assert!(reason_of(missing_id).contains("does not exist"), "{reasons:?}");

    // Every update recorded once, the case on the newest, and in fewer transactions than events.
    assert_eq!(env.count(&logs_sql).await, 300);
    let distinct = env
        .count(&format!(
            "SELECT count(DISTINCT event_id) FROM activity_logs WHERE case_id = {open}"
        ))
        .await;
    assert_eq!(distinct, 300);
    assert_eq!(env.count("SELECT count(*) FROM scans").await, 300);
    let on_latest = env
        .count(&format!(
            "SELECT count(*) FROM cases WHERE id = {open} AND latest_scan_id = 300 \
             AND scan_updated_at = '{}'",
            at(300).to_rfc3339()
        ))
        .await;
    assert_eq!(on_latest, 1, "the case shows the update received last");
    let transactions = env
        .count(&format!(
            "SELECT count(DISTINCT xmin::text) FROM activity_logs WHERE case_id = {open}"
        ))
        .await;
    println!("300 events (600 deliveries) committed in {transactions} transactions");
    assert!(transactions <= 150, "{transactions} transactions for 300 events");
    assert_eq!(
        env.count(&format!("SELECT count(*) FROM activity_logs WHERE case_id <> {open}")).await,
        0
    );
    let depths = env.queue_depths().await;
    assert!(depths.iter().all(|(_, n)| *n == 0), "{depths:?}");
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_consumes_again_after_the_broker_cancels_its_consumer() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let worker = env.spawn_worker();
    let first = Post::signed(PATIENT, r#"{"scan_id":1}"#).send(&gateway).await;
    first.assert(202, true, ACCEPTED);
    wait_applied(&env, first.event_id(), Duration::from_secs(10)).await;

    // Deleting the work queue makes RabbitMQ cancel the worker's consumer. Meanwhile the
    // gateway cannot route the event (503); once the worker has declared the queue again and
    // consumes, the same request is accepted and applied.
    let (connection, channel) = env.broker().await;
    channel
        .queue_delete(env.topology.work.as_str().into(), Default::default())
        .await
        .expect("delete the work queue");
    connection.close(200, "done".into()).await.ok();
    let started = Instant::now();
    let second = eventually(Duration::from_secs(20), || async {
        let reply = Post::signed(PATIENT, r#"{"scan_id":2}"#).send(&gateway).await;
        (reply.status.as_u16() == 202).then_some(reply)
    })
    .await
    .expect("accepted again once the worker has declared the queue again");
    wait_applied(&env, second.event_id(), Duration::from_secs(10)).await;
    println!("consuming again {:?} after the consumer was cancelled", started.elapsed());
    worker.stop().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_gateway_finishes_the_request_in_flight_and_takes_no_new_one() {
    use common::raw::{RawConnection, request};

    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let addr = gateway.addr.expect("address");
    let body = br#"{"scan_id":31}"#;
    let signature = scanhook_gateway::signature::sign(SECRET, body);
    let full = request(
        "POST",
        format!("{ROUTE}/{PATIENT}").as_bytes(),
        &[("Content-Type", "application/json"), ("X-Webhook-Signature", &signature)],
        body,
    );
    let (head, tail) = full.split_at(full.len() - 4);
    let mut connection = RawConnection::open(addr).await;
    connection.write(head).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let stopping = tokio::spawn(gateway.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a stopping gateway accepts no new connection"
    );
    connection.write(tail).await;
    let reply = connection.read_reply(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(reply.status, 202, "{reply:?}");
    assert_eq!(reply.message(), ACCEPTED);
    stopping.await.expect("the gateway stopped");
    assert_eq!(
        env.queue_depths().await.into_iter().find(|(q, _)| *q == env.topology.work).map(|(_, n)| n),
        Some(1)
    );
}
