//! The pipeline end to end: real gateway and worker, real PostgreSQL and RabbitMQ, real HTTP.

mod common;

use std::time::Duration;

use http::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use scanhook_shared::Secret;
use scanhook_shared::topology::{HEADER_REASON, header_str};

use common::*;

const PATIENT: &str = "605914";
const BODY: &str = r#"{"scan_id":1}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_notification_is_accepted_and_applied() {
    let env = TestEnv::new().await;
    let case_id = env.insert_case(PATIENT, "CASE-2025-0001").await;
    let gateway = env.spawn_gateway().await;
    let worker = env.spawn_worker();

    let body = r#"{"scan_id":7,"scanner":{"vendor":"acme"},"note":"caf\u00e9"}"#;
    let reply = Post::signed(PATIENT, body).send(&gateway).await;

    reply.assert(202, true, "Scan update processed successfully");
    assert_eq!(reply.body["data"]["patient_id"], PATIENT);
    assert_eq!(reply.body["data"]["case_number"], "CASE-2025-0001");
    let event_id = reply.event_id();
    assert_eq!(event_id.get_version_num(), 7);

    let took = wait_applied(&env, event_id, Duration::from_secs(10)).await;
    println!("202 to activity log: {took:?}");
    let logged = env
        .count(&format!(
            "SELECT count(*) FROM activity_logs WHERE event_id = '{event_id}' AND case_id = {case_id} \
             AND patient_id = '{PATIENT}' AND action = 'scan.updated' AND scan_id = 7 \
             AND payload = '{body}'::jsonb"
        ))
        .await;
    assert_eq!(logged, 1);
    let scans = env
        .count(&format!(
            "SELECT count(*) FROM scans WHERE case_id = {case_id} AND scan_id = 7 \
             AND last_event_id = '{event_id}' AND payload->'scanner'->>'vendor' = 'acme'"
        ))
        .await;
    assert_eq!(scans, 1);
    let case = env
        .count(&format!(
            "SELECT count(*) FROM cases WHERE id = {case_id} AND latest_scan_id = 7 \
             AND scan_updated_at IS NOT NULL"
        ))
        .await;
    assert_eq!(case, 1);
    worker.stop().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_empty_signature_is_400() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;

    Post::unsigned(PATIENT, BODY).send(&gateway).await.assert(
        400,
        false,
        "Missing webhook signature",
    );
    Post::unsigned(PATIENT, BODY).header("x-webhook-signature", "").send(&gateway).await.assert(
        400,
        false,
        "Missing webhook signature",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_signature_is_401_before_any_database_work() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let (db_link, db_url) = relay(env.settings.database.url.expose()).await;
    let mut settings = env.settings.clone();
    settings.database.url = Secret::new(db_url);
    let gateway = spawn_gateway(settings).await;
    db_link.cut();

    let other = scanhook_gateway::signature::sign("not-the-secret", BODY.as_bytes());
    for header in [
        other.as_str(),
        "sha256=abc",
        "sha1=0225eadb4c5d3a9f8f2f5403324064a64547cc17b1e79c01c1a38844732ada04",
    ] {
        Post::unsigned(PATIENT, BODY)
            .header("x-webhook-signature", header)
            .send(&gateway)
            .await
            .assert(401, false, "Invalid webhook signature");
    }
    // Signed for another body: the signature covers the exact bytes.
    Post::unsigned(PATIENT, BODY)
        .header(
            "x-webhook-signature",
            &scanhook_gateway::signature::sign(SECRET, b"{\"scan_id\":2}"),
        )
        .send(&gateway)
        .await
        .assert(401, false, "Invalid webhook signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_body_is_422_naming_the_problem() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;

    let cases = [
        ("not json", "Request body is not valid JSON"),
        ("[1]", "Request body must be a JSON object"),
        ("{}", "scan_id is required"),
        (r#"{"scan_id":"1"}"#, "scan_id must be a positive integer"),
        (r#"{"scan_id":0}"#, "scan_id must be a positive integer"),
        (r#"{"scan_id":2.5}"#, "scan_id must be a positive integer"),
        (r#"{"scan_id":9223372036854775808}"#, "scan_id is out of range"),
    ];
    for (body, message) in cases {
        let reply = Post::signed(PATIENT, body).send(&gateway).await;
        assert_eq!(reply.status.as_u16(), 422, "{body}: {reply:?}");
        assert_eq!(reply.body["status"], false);
        assert!(reply.message().starts_with(message), "{body}: {reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413() {
    let env = TestEnv::with(|s| s.gateway.max_body_bytes = 1024).await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;

    let big = format!(r#"{{"scan_id":1,"pad":"{}"}}"#, "x".repeat(2000));
    let reply = Post::signed(PATIENT, &big).send(&gateway).await;
    reply.assert(413, false, "Request body too large (limit 1024 bytes)");

    let fits = format!(r#"{{"scan_id":1,"pad":"{}"}}"#, "x".repeat(900));
    Post::signed(PATIENT, &fits).send(&gateway).await.assert(
        202,
        true,
        "Scan update processed successfully",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_without_an_active_case_is_404() {
    let env = TestEnv::new().await;
    let closed = env.insert_case("closed-patient", "CASE-C").await;
    env.exec(&format!("UPDATE cases SET status = 'closed' WHERE id = {closed}")).await;
    let gateway = env.spawn_gateway().await;

    let long = "9".repeat(65);
    for patient in ["unknown", "closed-patient", "bad%20id", "caf%C3%A9", long.as_str(), ""] {
        Post::signed(patient, BODY).send(&gateway).await.assert(
            404,
            false,
            "Case With Patient ID not found",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_active_case_is_chosen() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-OLD").await;
    env.insert_case(PATIENT, "CASE-NEW").await;
    let closed = env.insert_case(PATIENT, "CASE-CLOSED").await;
    env.exec(&format!("UPDATE cases SET status = 'closed' WHERE id = {closed}")).await;
    let gateway = env.spawn_gateway().await;

    let reply = Post::signed(PATIENT, BODY).send(&gateway).await;
    reply.assert(202, true, "Scan update processed successfully");
    assert_eq!(reply.body["data"]["case_number"], "CASE-NEW");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_are_404_and_other_methods_405() {
    let env = TestEnv::new().await;
    let gateway = env.spawn_gateway().await;

    for path in ["/", "/v1/webhooks/scans", "/v1/webhooks/scans/1/extra", "/v2/webhooks/scans/1"] {
        Post::signed(PATIENT, BODY).path(path).send(&gateway).await.assert(404, false, "Not found");
    }
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let reply = Post::signed(PATIENT, BODY).method(method).send(&gateway).await;
        reply.assert(405, false, "Method not allowed");
        assert_eq!(reply.headers["allow"], "POST");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_unreachable_is_503_and_never_202() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let (link, amqp_url) = relay(env.settings.amqp.url.expose()).await;
    let mut settings = env.settings.clone();
    settings.amqp.url = Secret::new(amqp_url);
    let gateway = spawn_gateway(settings).await;
    Post::signed(PATIENT, BODY).send(&gateway).await.assert(
        202,
        true,
        "Scan update processed successfully",
    );

    link.cut();
    for _ in 0..3 {
        let reply = Post::signed(PATIENT, BODY).send(&gateway).await;
        reply.assert(503, false, "Service temporarily unavailable");
        assert_eq!(reply.headers["retry-after"], "5");
    }
    let (connection, channel) = env.broker().await;
    let queued = channel
        .queue_declare(
            env.topology.work.as_str().into(),
            lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
            Default::default(),
        )
        .await
        .expect("work queue")
        .message_count();
    assert_eq!(queued, 1, "only the accepted event is queued");
    connection.close(200, "done".into()).await.ok();

    link.restore();
    let recovered = eventually(Duration::from_secs(15), || async {
        let reply = Post::signed(PATIENT, BODY).send(&gateway).await;
        (reply.status == 202).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "the gateway accepts again once the broker is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_unreachable_is_503_then_recovers() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let (link, db_url) = relay(env.settings.database.url.expose()).await;
    let mut settings = env.settings.clone();
    settings.database.url = Secret::new(db_url);
    let gateway = spawn_gateway(settings).await;

    link.cut();
    let reply = Post::signed(PATIENT, BODY).send(&gateway).await;
    reply.assert(503, false, "Service temporarily unavailable");
    assert!(reply.headers.contains_key("retry-after"));

    link.restore();
    let recovered = eventually(Duration::from_secs(15), || async {
        let reply = Post::signed(PATIENT, BODY).send(&gateway).await;
        (reply.status == 202).then_some(())
    })
    .await;
    assert!(recovered.is_some(), "the gateway accepts again once the database is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unexpected_failure_is_500_without_detail() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    env.exec("ALTER TABLE cases RENAME TO cases_moved").await;

    let reply = Post::signed(PATIENT, BODY).send(&gateway).await;
    reply.assert(500, false, "Internal server error");
    assert_eq!(reply.body["data"], Value::Null);
    let text = reply.body.to_string();
    assert!(!text.contains("cases") && !text.contains("relation"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_is_applied_once() {
    let env = TestEnv::with(|s| {
        s.worker.concurrency = 1;
        s.worker.prefetch = 1;
    })
    .await;
    let case_id = env.insert_case(PATIENT, "CASE-1").await;
    let worker = env.spawn_worker();

    let twice = Uuid::now_v7();
    let event = event_json(twice, case_id, 3);
    env.publish_raw(&event, properties_for(twice)).await;
    env.publish_raw(&event, properties_for(twice)).await;
    let after = Uuid::now_v7();
    env.publish_raw(&event_json(after, case_id, 4), properties_for(after)).await;

    // One worker taking one message at a time: once the last is applied, both copies were seen.
    wait_applied(&env, after, Duration::from_secs(10)).await;
    assert_eq!(activity_count(&env, twice).await, 1);
    assert_eq!(env.count("SELECT count(*) FROM activity_logs").await, 2);
    assert!(env.take_dead_letter(Duration::from_millis(200)).await.is_none());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_during_processing_ends_with_the_event_applied() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let (link, db_url) = relay(env.settings.database.url.expose()).await;
    let mut worker_settings = env.settings.clone();
    worker_settings.database.url = Secret::new(db_url);
    let worker = spawn_worker(worker_settings);
    let warm_up = Post::signed(PATIENT, BODY).send(&gateway).await;
    wait_applied(&env, warm_up.event_id(), Duration::from_secs(10)).await;

    link.cut();
    let reply = Post::signed(PATIENT, BODY).send(&gateway).await;
    reply.assert(202, true, "Scan update processed successfully");
    let event_id = reply.event_id();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(activity_count(&env, event_id).await, 0, "nothing can be applied during the outage");

    link.restore();
    let took = wait_applied(&env, event_id, Duration::from_secs(15)).await;
    println!("applied {took:?} after the database came back");
    assert_eq!(activity_count(&env, event_id).await, 1);
    assert!(env.take_dead_letter(Duration::from_millis(200)).await.is_none());
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_is_dead_lettered_and_the_worker_goes_on() {
    let env = TestEnv::new().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let worker = env.spawn_worker();

    env.publish_raw(b"{not an event", properties_for(Uuid::now_v7())).await;
    let dead = env.take_dead_letter(Duration::from_secs(10)).await.expect("dead-lettered");
    let reason = header_str(dead.delivery.properties.headers().as_ref(), HEADER_REASON);
    assert!(reason.as_deref().is_some_and(|r| r.starts_with("undecodable event")), "{reason:?}");
    assert_eq!(dead.delivery.data, b"{not an event");

    let reply = Post::signed(PATIENT, BODY).send(&gateway).await;
    wait_applied(&env, reply.event_id(), Duration::from_secs(10)).await;
    worker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_whose_case_closed_after_acceptance_is_dead_lettered() {
    let env = TestEnv::new().await;
    let case_id = env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let reply = Post::signed(PATIENT, BODY).send(&gateway).await;
    reply.assert(202, true, "Scan update processed successfully");
    env.exec(&format!("UPDATE cases SET status = 'closed' WHERE id = {case_id}")).await;

    let worker = env.spawn_worker();
    let dead = env.take_dead_letter(Duration::from_secs(10)).await.expect("dead-lettered");
    let reason = header_str(dead.delivery.properties.headers().as_ref(), HEADER_REASON);
    assert!(reason.as_deref().is_some_and(|r| r.contains("no longer active")), "{reason:?}");
    assert_eq!(activity_count(&env, reply.event_id()).await, 0);
    worker.stop().await;
}

fn event_json(event_id: Uuid, case_id: i64, scan_id: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": event_id,
        "patient_id": PATIENT,
        "case_id": case_id,
        "case_number": "CASE-1",
        "scan_id": scan_id,
        "payload": {"scan_id": scan_id},
        "received_at": chrono::Utc::now(),
    }))
    .expect("json")
}
