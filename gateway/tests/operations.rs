//! What operators see: the admin listeners of the real gateway and worker binaries (metrics,
//! health, readiness), one request followed through both processes' logs, and the `send` and
//! `seed` commands.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use common::services::{
    self, GatewayProcess, WorkerProcess, free_port, gateway_binary, worker_binary,
};
use common::*;

/// A gateway and a worker process on this test's database and queues, each with an admin
/// listener, ready to serve.
struct Stack {
    gateway: GatewayProcess,
    worker: WorkerProcess,
    gateway_addr: SocketAddr,
    gateway_admin: SocketAddr,
    worker_admin: SocketAddr,
}

impl Stack {
    async fn start(env: &TestEnv, name: &str, database_url_for_worker: Option<&str>) -> Self {
        let gateway_addr: SocketAddr =
            format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let gateway_admin: SocketAddr =
            format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let worker_admin: SocketAddr =
            format!("127.0.0.1:{}", free_port()).parse().expect("address");
        let gateway = GatewayProcess::start_binary(
            &gateway_binary(),
            &env.settings,
            &format!("{name}-gateway"),
            &[
                ("SCANHOOK__WEBHOOK__SECRET", SECRET),
                ("SCANHOOK__GATEWAY__LISTEN", &gateway_addr.to_string()),
                ("SCANHOOK__GATEWAY__ADMIN_LISTEN", &gateway_admin.to_string()),
                ("SCANHOOK__LOG__FORMAT", "json"),
                ("SCANHOOK__LOG__FILTER", "info,sqlx=warn"),
            ],
        );
        let mut worker_settings = env.settings.clone();
        if let Some(url) = database_url_for_worker {
            worker_settings.database.url = scanhook_shared::Secret::new(url);
        }
        let worker = WorkerProcess::start_binary(
            &worker_binary(),
            &worker_settings,
            &format!("{name}-worker"),
            &[
                ("SCANHOOK__WORKER__ADMIN_LISTEN", &worker_admin.to_string()),
                ("SCANHOOK__LOG__FORMAT", "json"),
                ("SCANHOOK__LOG__FILTER", "info,sqlx=warn"),
            ],
        );
        let stack = Self { gateway, worker, gateway_addr, gateway_admin, worker_admin };
        for (what, addr) in [("gateway", gateway_admin), ("worker", worker_admin)] {
            let ready = eventually(Duration::from_secs(30), || async move {
                let answer = tokio::time::timeout(Duration::from_secs(3), async {
                    match tokio::net::TcpStream::connect(addr).await {
                        Ok(_) => Some(get(addr, "/readyz").await),
                        Err(_) => None,
                    }
                });
                match answer.await {
                    Ok(Some((status, _))) if status.as_u16() == 200 => Some(()),
                    _ => None,
                }
            })
            .await;
            assert!(
                ready.is_some(),
                "the {what} did not become ready; gateway log:\n{}\nworker log:\n{}",
                stack.gateway.log_text(),
                stack.worker.log_text()
            );
        }
        stack
    }

    async fn scrape(&self, admin: SocketAddr) -> String {
        let (status, text) = get(admin, "/metrics").await;
        assert_eq!(status.as_u16(), 200, "{text}");
        text
    }

    async fn post(&self, post: Post) -> Reply {
        send(self.gateway_addr, post).await
    }
}

fn count(text: &str, name: &str, labels: &[&str]) -> f64 {
    metric(text, name, labels).unwrap_or(0.0)
}

/// Waits until the worker's metrics satisfy `check`, and returns them.
async fn worker_metrics_until(stack: &Stack, check: impl Fn(&str) -> bool) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        last = stack.scrape(stack.worker_admin).await;
        if check(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the worker's metrics never got there:\n{last}\nworker log:\n{}",
        stack.worker.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_admin_listener_serves_metrics_that_move_with_the_traffic() {
    let env = TestEnv::new().await;
    env.insert_case("ops-1", "CASE-OPS-1").await;
    // The worker reaches the database through a relay, to cut it for a retry.
    let (link, worker_db_url) = relay(env.settings.database.url.expose()).await;
    let stack = Stack::start(&env, "metrics", Some(&worker_db_url)).await;

    for admin in [stack.gateway_admin, stack.worker_admin] {
        let (status, body) = get(admin, "/healthz").await;
        assert_eq!(status.as_u16(), 200);
        let envelope: Value = serde_json::from_str(&body).expect("an envelope");
        assert_eq!(envelope["status"], Value::Bool(true));
        let (status, body) = get(admin, "/readyz").await;
        assert_eq!(status.as_u16(), 200, "{body}");
        let envelope: Value = serde_json::from_str(&body).expect("an envelope");
        assert_eq!(envelope["data"]["database"], Value::Bool(true), "{body}");
        assert_eq!(envelope["data"]["broker"], Value::Bool(true), "{body}");
        assert_eq!(get(admin, "/nothing").await.0.as_u16(), 404);
    }

    let route = r#"route="/v1/webhooks/scans/{patient_id}""#;
    let before = stack.scrape(stack.gateway_admin).await;
    assert_eq!(count(&before, "scanhook_http_requests_total", &[]), 0.0, "{before}");

    for scan_id in 1..=3 {
        stack.post(Post::signed("ops-1", &format!(r#"{{"scan_id":{scan_id}}}"#))).await.assert(
            202,
            true,
            "Scan update processed successfully",
        );
    }
    stack
        .post(
            Post::unsigned("ops-1", r#"{"scan_id":4}"#).header("x-webhook-signature", "sha256=00"),
        )
        .await
        .assert(401, false, "Invalid webhook signature");
    stack.post(Post::signed("nobody", r#"{"scan_id":5}"#)).await.assert(
        404,
        false,
        "Case With Patient ID not found",
    );
    stack.post(Post::signed("ops-1", r#"{"scan_id":6}"#).path("/elsewhere")).await;

    let after = stack.scrape(stack.gateway_admin).await;
    let requests = "scanhook_http_requests_total";
    assert_eq!(
        count(
            &after,
            requests,
            &[route, r#"status="202""#, r#"reason="accepted""#, r#"signer="secret-1""#]
        ),
        3.0,
        "{after}"
    );
    assert_eq!(
        count(&after, requests, &[r#"status="401""#, r#"reason="signature_malformed""#])
            + count(&after, requests, &[r#"status="401""#, r#"reason="signature_mismatch""#]),
        1.0,
        "{after}"
    );
    assert_eq!(count(&after, requests, &[r#"status="404""#, r#"reason="case_not_found""#]), 1.0);
    assert_eq!(count(&after, requests, &[r#"route="unmatched""#, r#"status="404""#]), 1.0);
    assert_eq!(count(&after, "scanhook_http_request_duration_seconds_count", &[route]), 5.0);
    assert!(metric(&after, "scanhook_http_request_duration_seconds_bucket", &[route]).is_some());
    assert_eq!(count(&after, "scanhook_publish_confirm_seconds_count", &[]), 3.0, "{after}");
    assert!(metric(&after, "scanhook_db_pool_connections", &[r#"process="gateway""#]).is_some());
    assert!(metric(&after, "scanhook_broker_channels", &[r#"state="open""#]).unwrap_or(0.0) >= 1.0);
    assert!(metric(&after, "scanhook_http_requests_in_flight", &[]).is_some());

    let applied = r#"outcome="applied""#;
    let worker =
        worker_metrics_until(&stack, |m| count(m, "scanhook_events_total", &[applied]) == 3.0)
            .await;
    assert_eq!(count(&worker, "scanhook_event_lag_seconds_count", &[]), 3.0, "{worker}");
    assert!(count(&worker, "scanhook_event_processing_seconds_count", &[]) >= 3.0);
    assert!(count(&worker, "scanhook_worker_batch_events_count", &[]) >= 1.0, "{worker}");
    assert!(metric(&worker, "scanhook_worker_batch_events_bucket", &[r#"le="64""#]).is_some());
    assert_eq!(metric(&worker, "scanhook_worker_consuming", &[]), Some(1.0));
    assert!(metric(&worker, "scanhook_db_pool_connections", &[r#"process="worker""#]).is_some());
    // Queue depths are read on their own clock, so the gauge may come a little later.
    let work_queue = format!(r#"queue="{}""#, env.topology.work);
    worker_metrics_until(&stack, |m| {
        metric(m, "scanhook_queue_messages", &[&work_queue]).is_some()
    })
    .await;

    // The database cut for the worker: the next event is retried through a delay queue, then
    // applied once the database is back.
    link.cut();
    stack.post(Post::signed("ops-1", r#"{"scan_id":7}"#)).await.assert(
        202,
        true,
        "Scan update processed successfully",
    );
    worker_metrics_until(&stack, |m| {
        count(m, "scanhook_events_total", &[r#"outcome="retried""#]) >= 1.0
    })
    .await;
    link.restore();
    worker_metrics_until(&stack, |m| count(m, "scanhook_events_total", &[applied]) == 4.0).await;

    // A message that is not an event is dead-lettered, and counted.
    env.publish_raw(b"not an event", properties_for(Uuid::now_v7())).await;
    let worker = worker_metrics_until(&stack, |m| {
        count(m, "scanhook_events_total", &[r#"outcome="dead_lettered""#]) == 1.0
    })
    .await;
    assert_eq!(count(&worker, "scanhook_events_total", &[applied]), 4.0);
    let dead_queue = format!(r#"queue="{}""#, env.topology.dead);
    worker_metrics_until(&stack, |m| {
        metric(m, "scanhook_queue_messages", &[&dead_queue]) == Some(1.0)
    })
    .await;
}

/// The JSON log lines of a process that mention `needle` anywhere.
fn lines_with(log: &str, needle: &str) -> Vec<Value> {
    log.lines()
        .filter(|line| line.contains(needle))
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// A field of a log line, from the event itself or from any of its spans.
fn field<'a>(line: &'a Value, name: &str) -> Option<&'a str> {
    if let Some(value) = line.get(name).and_then(Value::as_str) {
        return Some(value);
    }
    let spans = line.get("spans").and_then(Value::as_array).into_iter().flatten();
    spans.chain(line.get("span")).find_map(|span| span.get(name).and_then(Value::as_str))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_id_and_trace_lead_from_the_gateway_log_to_the_worker_log() {
    let env = TestEnv::new().await;
    env.insert_case("ops-2", "CASE-OPS-2").await;
    let stack = Stack::start(&env, "follow", None).await;

    let request_id = format!("follow-{}", Uuid::now_v7().simple());
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = stack
        .post(
            Post::signed("ops-2", r#"{"scan_id":11}"#)
                .header("x-request-id", &request_id)
                .header("traceparent", &format!("00-{trace_id}-00f067aa0ba902b7-01")),
        )
        .await;
    reply.assert(202, true, "Scan update processed successfully");
    assert_eq!(reply.headers["x-request-id"], request_id.as_str());
    let event_id = reply.event_id().to_string();
    wait_applied(&env, reply.event_id(), Duration::from_secs(10)).await;

    // The worker logs after committing; give the line a moment to reach the file.
    let found = eventually(Duration::from_secs(5), || async {
        let lines = lines_with(&stack.worker.log_text(), &request_id);
        lines.into_iter().find(|line| field(line, "outcome") == Some("applied"))
    })
    .await;
    let worker_line = found.unwrap_or_else(|| {
        panic!("no worker line with {request_id}:\n{}", stack.worker.log_text())
    });
    assert_eq!(field(&worker_line, "event_id"), Some(event_id.as_str()), "{worker_line}");
    assert_eq!(field(&worker_line, "trace_id"), Some(trace_id), "{worker_line}");
    assert_eq!(field(&worker_line, "patient_id"), Some("ops-2"), "{worker_line}");

    let gateway_lines = lines_with(&stack.gateway.log_text(), &request_id);
    let gateway_line = gateway_lines
        .iter()
        .find(|line| field(line, "outcome") == Some("accepted"))
        .unwrap_or_else(|| {
            panic!("no gateway line with {request_id}:\n{}", stack.gateway.log_text())
        });
    assert_eq!(field(gateway_line, "event_id"), Some(event_id.as_str()), "{gateway_line}");
    assert_eq!(field(gateway_line, "trace_id"), Some(trace_id), "{gateway_line}");
    // The worker's span is a child of the gateway's: same trace, its own span id.
    assert_ne!(field(gateway_line, "span_id"), field(&worker_line, "span_id"));
}

/// Runs the `scanhook` command with exactly these settings in its environment.
fn scanhook(args: &[&str], vars: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_scanhook"));
    command.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    for (key, value) in vars {
        command.env(key, value);
    }
    command.output().expect("the scanhook binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_creates_active_cases_and_send_gets_them_accepted() {
    let env = TestEnv::new().await;
    let database = env.settings.database.url.expose().to_owned();
    let output = scanhook(
        &["seed", "--count", "3", "--prefix", "clinic"],
        &[("SCANHOOK__DATABASE__URL", &database)],
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains("clinic-000001  CLINIC-000001  active"), "{printed}");
    assert!(printed.contains("3 patients with an active case"), "{printed}");
    assert_eq!(
        env.count(
            "SELECT count(*) FROM cases WHERE status = 'active' AND patient_id LIKE 'clinic-%'"
        )
        .await,
        3
    );

    // Seeding again makes a closed case active again, and adds none twice.
    env.exec("UPDATE cases SET status = 'closed' WHERE patient_id = 'clinic-000002'").await;
    let output = scanhook(
        &["seed", "--count", "3", "--prefix", "clinic"],
        &[("SCANHOOK__DATABASE__URL", &database)],
    );
    assert!(output.status.success());
    assert_eq!(
        env.count(
            "SELECT count(*) FROM cases WHERE status = 'active' AND patient_id LIKE 'clinic-%'"
        )
        .await,
        3
    );

    let refused =
        scanhook(&["seed", "--prefix", "bad prefix"], &[("SCANHOOK__DATABASE__URL", &database)]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--prefix"));

    let gateway = env.spawn_gateway().await;
    let url = gateway.url("");
    let sent = scanhook(
        &[
            "send",
            "--url",
            &url,
            "--patient",
            "clinic-000002",
            "--body",
            r#"{"scan_id":42,"device":"x"}"#,
            "--idempotency-key",
            "k-1",
        ],
        &[("SCANHOOK__WEBHOOK__SECRET", SECRET)],
    );
    let printed = String::from_utf8_lossy(&sent.stdout);
    assert!(sent.status.success(), "{printed}{}", String::from_utf8_lossy(&sent.stderr));
    assert!(printed.starts_with("HTTP 202 Accepted"), "{printed}");
    assert!(printed.contains(r#""case_number": "CLINIC-000002""#), "{printed}");
    assert!(printed.contains("x-request-id: "), "{printed}");

    // With another secret the answer is shown and the exit status says it was not accepted.
    let refused = scanhook(
        &["send", "--url", &url, "--patient", "clinic-000001", "--secret", "not-the-secret"],
        &[],
    );
    let printed = String::from_utf8_lossy(&refused.stdout);
    assert!(!refused.status.success());
    assert!(printed.starts_with("HTTP 401 Unauthorized"), "{printed}");
    assert!(printed.contains("Invalid webhook signature"), "{printed}");

    // Standard Webhooks signing, and an id that needs escaping on the way.
    let standard = scanhook(
        &["send", "--url", &url, "--patient", "clinic/000003", "--webhook-id", "msg_1"],
        &[("SCANHOOK__WEBHOOK__SECRET", SECRET)],
    );
    let printed = String::from_utf8_lossy(&standard.stdout);
    assert!(printed.starts_with("HTTP 404 Not Found"), "{printed}");
    assert!(printed.contains("Case With Patient ID not found"), "{printed}");
    let standard = scanhook(
        &["send", "--url", &url, "--patient", "clinic-000003", "--webhook-id", "msg_1"],
        &[("SCANHOOK__WEBHOOK__SECRET", SECRET)],
    );
    assert!(standard.status.success(), "{}", String::from_utf8_lossy(&standard.stdout));

    let unreachable = scanhook(
        &[
            "send",
            "--url",
            &format!("http://127.0.0.1:{}", services::free_port()),
            "--patient",
            "p",
            "--secret",
            "s",
        ],
        &[],
    );
    assert!(!unreachable.status.success());
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("cannot connect"));
    gateway.stop().await;
}
