//! The edge: every malformed, hostile or unusual request gets its documented answer, from the
//! real gateway over a real socket, and every answer is held against docs/openapi.json.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use scanhook_gateway::signature::{sign, sign_standard};
use scanhook_shared::Secret;

use common::openapi::OpenApi;
use common::raw::{RawConnection, RawReply, chunked, exchange, request};
use common::*;

const PATIENT: &str = "605914";
const PATH: &str = "/v1/webhooks/scans/605914";
const BODY: &str = r#"{"scan_id":1}"#;
const JSON: (&str, &str) = ("Content-Type", "application/json");
const ACCEPTED: &str = "Scan update processed successfully";
const CASE_NOT_FOUND: &str = "Case With Patient ID not found";
const INVALID_SIGNATURE: &str = "Invalid webhook signature";
const NOT_JSON: &str = "Content-Type must be application/json (UTF-8)";

/// A POST of `body` to `target`, signed with the test secret, with JSON content type.
fn signed(target: &str, body: &[u8], extra: &[(&str, &str)]) -> Vec<u8> {
    let signature = sign(SECRET, body);
    let mut headers = vec![JSON, ("X-Webhook-Signature", signature.as_str())];
    headers.extend_from_slice(extra);
    request("POST", target.as_bytes(), &headers, body)
}

/// A POST of `body` with exactly these headers.
fn with(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    request("POST", PATH.as_bytes(), headers, body)
}

/// A signature header for `body` changed by `edit`.
fn edited(body: &str, edit: impl Fn(&str) -> String) -> String {
    edit(&sign(SECRET, body.as_bytes()))
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// The message, or its beginning for messages that quote the input.
    message: &'static str,
}

fn case(name: &'static str, request: Vec<u8>, status: u16, message: &'static str) -> Case {
    Case { name, request, status, message }
}

fn table() -> Vec<Case> {
    let hex = sign(SECRET, BODY.as_bytes());
    let digits = hex.trim_start_matches("sha256=").to_owned();
    let long_patient = format!("/v1/webhooks/scans/{}", "9".repeat(65));
    let deep = format!(r#"{{"scan_id":1,"x":{}{}}}"#, "[".repeat(300), "]".repeat(300));
    let big_chunked_body = format!(r#"{{"scan_id":1,"pad":"{}"}}"#, "x".repeat(2000));
    let small_chunked_body = format!(r#"{{"scan_id":1,"pad":"{}"}}"#, "x".repeat(200));
    let pad = "p".repeat(3000);

    let with_sig = |value: String, body: &str| {
        with(&[JSON, ("X-Webhook-Signature", value.as_str())], body.as_bytes())
    };
    let chunked_post = |body: &str, content_type: &str| {
        let signature = sign(SECRET, body.as_bytes());
        let headers = [
            ("Content-Type", content_type),
            ("X-Webhook-Signature", signature.as_str()),
            ("Transfer-Encoding", "chunked"),
        ];
        request("POST", PATH.as_bytes(), &headers, &chunked(body.as_bytes(), 100))
    };

    vec![
        // Routes and paths.
        case("other method", request("GET", PATH.as_bytes(), &[], b""), 405, "Method not allowed"),
        case("unknown path", signed("/v1/nope", BODY.as_bytes(), &[]), 404, "Not found"),
        case("trailing slash", signed(&format!("{PATH}/"), BODY.as_bytes(), &[]), 404, "Not found"),
        case(
            "double slash before scans",
            signed("/v1/webhooks//scans/605914", BODY.as_bytes(), &[]),
            404,
            "Not found",
        ),
        case(
            "double slash before the id",
            signed("/v1/webhooks/scans//605914", BODY.as_bytes(), &[]),
            404,
            "Not found",
        ),
        case(
            "other letter case",
            signed("/V1/webhooks/scans/605914", BODY.as_bytes(), &[]),
            404,
            "Not found",
        ),
        case(
            "query string ignored",
            signed(&format!("{PATH}?from=scanner"), BODY.as_bytes(), &[]),
            202,
            ACCEPTED,
        ),
        case(
            "percent-encoded id",
            signed("/v1/webhooks/scans/%36%30%35%39%31%34", BODY.as_bytes(), &[]),
            202,
            ACCEPTED,
        ),
        case(
            "encoded slash in the id",
            signed("/v1/webhooks/scans/605914%2F1", BODY.as_bytes(), &[]),
            404,
            CASE_NOT_FOUND,
        ),
        case(
            "broken escape in the id",
            signed("/v1/webhooks/scans/6059%G4", BODY.as_bytes(), &[]),
            404,
            CASE_NOT_FOUND,
        ),
        case(
            "encoded non-ASCII id",
            signed("/v1/webhooks/scans/caf%C3%A9", BODY.as_bytes(), &[]),
            404,
            CASE_NOT_FOUND,
        ),
        case(
            "raw non-ASCII id",
            request(
                "POST",
                "/v1/webhooks/scans/café".as_bytes(),
                &[JSON, ("X-Webhook-Signature", hex.as_str())],
                BODY.as_bytes(),
            ),
            404,
            CASE_NOT_FOUND,
        ),
        case("empty id", signed("/v1/webhooks/scans/", BODY.as_bytes(), &[]), 404, CASE_NOT_FOUND),
        case("id too long", signed(&long_patient, BODY.as_bytes(), &[]), 404, CASE_NOT_FOUND),
        case(
            "unknown patient",
            signed("/v1/webhooks/scans/404404", BODY.as_bytes(), &[]),
            404,
            CASE_NOT_FOUND,
        ),
        // Content type.
        case(
            "no content type",
            with(&[("X-Webhook-Signature", hex.as_str())], BODY.as_bytes()),
            415,
            NOT_JSON,
        ),
        case(
            "text/plain",
            with(
                &[("Content-Type", "text/plain"), ("X-Webhook-Signature", hex.as_str())],
                BODY.as_bytes(),
            ),
            415,
            NOT_JSON,
        ),
        case(
            "json suffix lookalike",
            with(
                &[("Content-Type", "application/jsonx"), ("X-Webhook-Signature", hex.as_str())],
                BODY.as_bytes(),
            ),
            415,
            NOT_JSON,
        ),
        case(
            "latin-1 charset",
            with(
                &[
                    ("Content-Type", "application/json; charset=iso-8859-1"),
                    ("X-Webhook-Signature", hex.as_str()),
                ],
                BODY.as_bytes(),
            ),
            415,
            NOT_JSON,
        ),
        case(
            "content type twice",
            with(&[JSON, JSON, ("X-Webhook-Signature", hex.as_str())], BODY.as_bytes()),
            415,
            NOT_JSON,
        ),
        case(
            "content type in other case with charset",
            with(
                &[
                    ("Content-Type", "Application/JSON; Charset=\"UTF-8\""),
                    ("X-Webhook-Signature", hex.as_str()),
                ],
                BODY.as_bytes(),
            ),
            202,
            ACCEPTED,
        ),
        // Signature header.
        case("no signature", with(&[JSON], BODY.as_bytes()), 400, "Missing webhook signature"),
        case("empty signature", with_sig(String::new(), BODY), 400, "Missing webhook signature"),
        case(
            "signature twice",
            with(
                &[
                    JSON,
                    ("X-Webhook-Signature", hex.as_str()),
                    ("X-Webhook-Signature", hex.as_str()),
                ],
                BODY.as_bytes(),
            ),
            401,
            INVALID_SIGNATURE,
        ),
        case("space inside", with_sig(format!("sha256= {digits}"), BODY), 401, INVALID_SIGNATURE),
        case(
            "other algorithm",
            with_sig(format!("sha1={}", &digits[..40]), BODY),
            401,
            INVALID_SIGNATURE,
        ),
        case(
            "prefix in capitals",
            with_sig(format!("SHA256={digits}"), BODY),
            401,
            INVALID_SIGNATURE,
        ),
        case(
            "odd length",
            with_sig(format!("sha256={}", &digits[..63]), BODY),
            401,
            INVALID_SIGNATURE,
        ),
        case(
            "non-hex digit",
            with_sig(edited(BODY, |s| format!("{}g", &s[..70])), BODY),
            401,
            INVALID_SIGNATURE,
        ),
        case("too short", with_sig("sha256=abcd".into(), BODY), 401, INVALID_SIGNATURE),
        case("too long", with_sig(format!("sha256={digits}00"), BODY), 401, INVALID_SIGNATURE),
        case(
            "wrong secret",
            with_sig(sign("not-the-secret", BODY.as_bytes()), BODY),
            401,
            INVALID_SIGNATURE,
        ),
        case(
            "signature of another body",
            with_sig(sign(SECRET, br#"{"scan_id":2}"#), BODY),
            401,
            INVALID_SIGNATURE,
        ),
        case(
            "hex in capitals",
            with_sig(format!("sha256={}", digits.to_uppercase()), BODY),
            202,
            ACCEPTED,
        ),
        case(
            "spaces around the value (not part of it in HTTP)",
            with_sig(format!("  {hex}  "), BODY),
            202,
            ACCEPTED,
        ),
        // Body.
        case(
            "not UTF-8",
            signed(PATH, b"{\"scan_id\":1,\"n\":\"\xff\"}", &[]),
            422,
            "Request body must be UTF-8",
        ),
        case(
            "not JSON",
            signed(PATH, b"scan_id=1", &[]),
            422,
            "Request body is not valid JSON: syntax error",
        ),
        case(
            "empty body",
            signed(PATH, b"", &[]),
            422,
            "Request body is not valid JSON: unexpected end",
        ),
        case(
            "trailing garbage",
            signed(PATH, b"{\"scan_id\":1} x", &[]),
            422,
            "Request body is not valid JSON",
        ),
        case(
            "array",
            signed(PATH, b"[{\"scan_id\":1}]", &[]),
            422,
            "Request body must be a JSON object",
        ),
        case("scan_id missing", signed(PATH, b"{\"scan\":1}", &[]), 422, "scan_id is required"),
        case(
            "scan_id null",
            signed(PATH, br#"{"scan_id":null}"#, &[]),
            422,
            "scan_id must not be null",
        ),
        case(
            "scan_id string",
            signed(PATH, br#"{"scan_id":"1"}"#, &[]),
            422,
            "scan_id must be a positive integer, not a string",
        ),
        case(
            "scan_id float",
            signed(PATH, br#"{"scan_id":1.5}"#, &[]),
            422,
            "scan_id must be a positive integer, without a fraction",
        ),
        case(
            "scan_id exponent",
            signed(PATH, br#"{"scan_id":1e2}"#, &[]),
            422,
            "scan_id must be a positive integer, without a fraction",
        ),
        case(
            "scan_id zero",
            signed(PATH, br#"{"scan_id":0}"#, &[]),
            422,
            "scan_id must be a positive integer (greater than 0)",
        ),
        case(
            "scan_id negative",
            signed(PATH, br#"{"scan_id":-7}"#, &[]),
            422,
            "scan_id must be a positive integer (greater than 0)",
        ),
        case(
            "scan_id beyond 64 bits",
            signed(PATH, br#"{"scan_id":9223372036854775808}"#, &[]),
            422,
            "scan_id is out of range",
        ),
        case(
            "duplicated key",
            signed(PATH, br#"{"scan_id":1,"scan_id":2}"#, &[]),
            422,
            "Request body has the key \"scan_id\" more than once",
        ),
        case(
            "duplicated nested key",
            signed(PATH, br#"{"scan_id":1,"tooth":{"n":1,"n":2}}"#, &[]),
            422,
            "Request body has the key \"n\" more than once",
        ),
        case(
            "nested too deep",
            signed(PATH, deep.as_bytes(), &[]),
            422,
            "Request body is nested too deeply",
        ),
        // Sizes and framing.
        case(
            "declared length over the limit",
            with(&[JSON, ("X-Webhook-Signature", hex.as_str()), ("Content-Length", "5000")], b""),
            413,
            "Request body too large (limit 1024 bytes)",
        ),
        case(
            "chunked body over the limit",
            chunked_post(&big_chunked_body, "application/json"),
            413,
            "Request body too large (limit 1024 bytes)",
        ),
        case(
            "chunked body within the limit",
            chunked_post(&small_chunked_body, "application/json"),
            202,
            ACCEPTED,
        ),
        case(
            "broken chunked coding",
            with(
                &[JSON, ("X-Webhook-Signature", hex.as_str()), ("Transfer-Encoding", "chunked")],
                b"zz\r\n{}\r\n0\r\n\r\n",
            ),
            400,
            "Request body could not be read",
        ),
        case(
            "header lines over the limit",
            signed(PATH, BODY.as_bytes(), &[("X-Pad", pad.as_str())]),
            431,
            "Request headers too large (limit 2048 bytes)",
        ),
        case(
            "bad idempotency key",
            signed(PATH, BODY.as_bytes(), &[("Idempotency-Key", "two words")]),
            400,
            "Invalid Idempotency-Key header",
        ),
    ]
}

async fn edge_env() -> TestEnv {
    TestEnv::with(|s| {
        s.gateway.max_body_bytes = 1024;
        s.gateway.max_header_bytes = 2048;
        s.gateway.body_timeout_ms = 700;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_edge_case_gets_its_documented_answer() {
    let env = edge_env().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let addr = gateway.addr.expect("address");
    let openapi = OpenApi::load();
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();

    for case in table() {
        let reply = exchange(addr, &case.request).await;
        let message = reply.message();
        if reply.status != case.status || !message.starts_with(case.message) {
            failures.push(format!(
                "{}: expected {} {:?}, got {} {:?}",
                case.name, case.status, case.message, reply.status, message
            ));
            continue;
        }
        let envelope = reply.envelope().expect("an envelope");
        assert_eq!(envelope["status"], reply.status == 202, "{}", case.name);
        if reply.status == 202 {
            assert_eq!(envelope["data"]["patient_id"], PATIENT, "{}", case.name);
        }
        assert!(reply.header("x-request-id").is_some(), "{}", case.name);
        openapi.check(&reply, case.name);
        seen.insert(reply.status);
    }
    assert!(failures.is_empty(), "unexpected answers:\n{}", failures.join("\n"));

    // A body that stops coming: 408 once the body timeout passes.
    let reply = slow_body(addr).await;
    openapi.check(&reply, "slow body");
    seen.insert(reply.status);

    // The allowlist, with nobody on it that the tests use.
    let guarded = {
        let mut settings = env.settings.clone();
        settings.gateway.allow_cidrs = vec!["192.0.2.0/24".into()];
        spawn_gateway(settings).await
    };
    let reply = exchange(guarded.addr.expect("address"), &signed(PATH, BODY.as_bytes(), &[])).await;
    openapi.check(&reply, "outside the allowlist");
    assert_eq!((reply.status, reply.message().as_str()), (403, "Client address not allowed"));
    seen.insert(reply.status);

    // The broker out of reach: 503 with Retry-After.
    let (link, amqp_url) = relay(env.settings.amqp.url.expose()).await;
    let cut_off = {
        let mut settings = env.settings.clone();
        settings.amqp.url = Secret::new(amqp_url);
        spawn_gateway(settings).await
    };
    link.cut();
    let reply = exchange(cut_off.addr.expect("address"), &signed(PATH, BODY.as_bytes(), &[])).await;
    openapi.check(&reply, "broker unreachable");
    assert_eq!(reply.status, 503);
    seen.insert(reply.status);

    // Something unexpected: 500 without detail. (A patient not looked up before, since the
    // gateway remembers found cases for a moment.)
    env.exec("ALTER TABLE cases RENAME TO cases_elsewhere").await;
    let path = "/v1/webhooks/scans/not-looked-up-before";
    let reply = exchange(addr, &signed(path, BODY.as_bytes(), &[])).await;
    openapi.check(&reply, "unexpected failure");
    assert_eq!(reply.status, 500);
    seen.insert(reply.status);

    assert_eq!(seen, openapi.statuses(), "statuses given vs statuses documented");
}

/// Sends the headers and part of the body, then waits for the gateway's answer.
async fn slow_body(addr: std::net::SocketAddr) -> RawReply {
    let full = signed(PATH, BODY.as_bytes(), &[]);
    let cut = full.len() - 5;
    let mut connection = RawConnection::open(addr).await;
    connection.write(&full[..cut]).await;
    let started = Instant::now();
    let reply = connection.read_reply(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(reply.status, 408, "{reply:?}");
    assert_eq!(reply.message(), "Request body not received in time");
    assert_eq!(reply.header("connection"), Some("close"));
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(600), "answered after {waited:?}");
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_lines_beyond_what_http_parsing_takes_get_a_bare_431() {
    let env = edge_env().await;
    let gateway = env.spawn_gateway().await;
    let pad = "p".repeat(9000);
    let reply = exchange(
        gateway.addr.expect("address"),
        &signed(PATH, BODY.as_bytes(), &[("X-Pad", &pad)]),
    )
    .await;
    assert_eq!(reply.status, 431, "{reply:?}");
    assert!(reply.envelope().is_none(), "answered by the HTTP parser, without an envelope");

    let many: Vec<(String, String)> =
        (0..120).map(|i| (format!("X-H{i}"), "1".to_owned())).collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let reply =
        exchange(gateway.addr.expect("address"), &signed(PATH, BODY.as_bytes(), &refs)).await;
    assert_eq!(reply.status, 431, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_to_send_its_headers_is_disconnected() {
    let env = TestEnv::with(|s| s.gateway.header_timeout_ms = 500).await;
    let gateway = env.spawn_gateway().await;
    let mut connection = RawConnection::open(gateway.addr.expect("address")).await;
    connection.write(b"POST /v1/webhooks/scans/605914 HTTP/1.1\r\nHost: x\r\n").await;
    let started = Instant::now();
    assert!(connection.closes_within(Duration::from_secs(5)).await, "connection left open");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(400), "closed after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_cap_are_shed_with_503() {
    let env = TestEnv::with(|s| {
        s.gateway.max_in_flight = 2;
        s.gateway.body_timeout_ms = 10_000;
    })
    .await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let addr = gateway.addr.expect("address");

    // Two requests whose bodies are still on their way hold both places.
    let full = signed(PATH, BODY.as_bytes(), &[]);
    let cut = full.len() - 3;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut connection = RawConnection::open(addr).await;
        connection.write(&full[..cut]).await;
        holders.push(connection);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let reply = exchange(addr, &full).await;
    assert_eq!((reply.status, reply.message().as_str()), (503, "Service temporarily unavailable"));
    assert_eq!(reply.header("retry-after"), Some("5"));
    OpenApi::load().check(&reply, "overloaded");

    // Once they finish, places free up and requests are accepted again.
    for connection in &mut holders {
        connection.write(&full[cut..]).await;
        let reply = connection.read_reply(Duration::from_secs(10)).await.expect("an answer");
        assert_eq!(reply.status, 202, "{reply:?}");
    }
    assert_eq!(exchange(addr, &full).await.status, 202);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_a_go_ahead_or_an_early_refusal() {
    let env = edge_env().await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let addr = gateway.addr.expect("address");

    let signature = sign(SECRET, BODY.as_bytes());
    let length = BODY.len().to_string();
    let head = request(
        "POST",
        PATH.as_bytes(),
        &[
            JSON,
            ("X-Webhook-Signature", &signature),
            ("Expect", "100-continue"),
            ("Content-Length", &length),
        ],
        b"",
    );
    let mut connection = RawConnection::open(addr).await;
    connection.write(&head).await;
    let interim = connection.read_reply(Duration::from_secs(5)).await.expect("an interim answer");
    assert_eq!(interim.status, 100);
    connection.write(BODY.as_bytes()).await;
    let reply = connection.read_reply(Duration::from_secs(5)).await.expect("the final answer");
    assert_eq!((reply.status, reply.message().as_str()), (202, ACCEPTED));

    // Too large by its declared length: refused without asking for the body.
    let head = request(
        "POST",
        PATH.as_bytes(),
        &[
            JSON,
            ("X-Webhook-Signature", &signature),
            ("Expect", "100-continue"),
            ("Content-Length", "5000"),
        ],
        b"",
    );
    let mut connection = RawConnection::open(addr).await;
    connection.write(&head).await;
    let reply = connection.read_reply(Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(reply.status, 413, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_believes_forwarded_addresses_only_from_trusted_proxies() {
    let env = TestEnv::with(|s| {
        s.gateway.allow_cidrs = vec!["10.0.0.0/8".into()];
        s.gateway.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let addr = gateway.addr.expect("address");

    let from = |forwarded: &str| signed(PATH, BODY.as_bytes(), &[("X-Forwarded-For", forwarded)]);
    assert_eq!(exchange(addr, &from("10.1.2.3")).await.status, 202);
    assert_eq!(exchange(addr, &from("10.9.9.9, 198.51.100.7")).await.status, 403);
    assert_eq!(exchange(addr, &from("not-an-address")).await.status, 403);
    assert_eq!(
        exchange(addr, &signed(PATH, BODY.as_bytes(), &[])).await.status,
        403,
        "the proxy itself is not on the list"
    );

    // Without the proxy trusted, the header counts for nothing.
    let mut settings = env.settings.clone();
    settings.gateway.trusted_proxies = Vec::new();
    let untrusting = spawn_gateway(settings).await;
    let reply = exchange(untrusting.addr.expect("address"), &from("10.1.2.3")).await;
    assert_eq!((reply.status, reply.message().as_str()), (403, "Client address not allowed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_requests_are_verified_and_keyed_by_webhook_id() {
    let vendor_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let env = TestEnv::with(|s| {
        s.webhook.secret = Secret::new(format!("legacy:{SECRET},aligner-co:{vendor_secret}"));
    })
    .await;
    env.insert_case(PATIENT, "CASE-1").await;
    let gateway = env.spawn_gateway().await;
    let addr = gateway.addr.expect("address");
    let _worker = env.spawn_worker();

    let post = |id: &str, timestamp: i64, body: &str, signature: Option<String>| {
        let signature = signature.unwrap_or_else(|| {
            sign_standard(vendor_secret, id, timestamp, body.as_bytes()).expect("whsec secret")
        });
        let timestamp = timestamp.to_string();
        let headers = [
            JSON,
            ("webhook-id", id),
            ("webhook-timestamp", &timestamp),
            ("webhook-signature", &signature),
        ];
        request("POST", PATH.as_bytes(), &headers, body.as_bytes())
    };
    let now = chrono::Utc::now().timestamp();

    let first = exchange(addr, &post("msg_2Kq9", now, BODY, None)).await;
    assert_eq!((first.status, first.message().as_str()), (202, ACCEPTED), "{first:?}");
    let again = exchange(addr, &post("msg_2Kq9", now + 1, BODY, None)).await;
    let event_id =
        |reply: &RawReply| reply.envelope().expect("envelope")["data"]["event_id"].clone();
    assert_eq!(event_id(&first), event_id(&again), "the same webhook-id is the same event");
    let other = exchange(addr, &post("msg_other", now, BODY, None)).await;
    assert_ne!(event_id(&first), event_id(&other));

    let stale = exchange(addr, &post("msg_old", now - 301, BODY, None)).await;
    assert_eq!((stale.status, stale.message().as_str()), (401, INVALID_SIGNATURE));
    let future = exchange(addr, &post("msg_new", now + 301, BODY, None)).await;
    assert_eq!(future.status, 401);
    let several = sign_standard(vendor_secret, "msg_multi", now, BODY.as_bytes()).expect("signs");
    let listed = format!("v1,aGVsbG8gd29ybGQgaGVsbG8gd29ybGQgaGVsbG8gd28= {several}");
    assert_eq!(exchange(addr, &post("msg_multi", now, BODY, Some(listed))).await.status, 202);
    let wrong = sign_standard("whsec_c2VjcmV0", "msg_x", now, BODY.as_bytes());
    assert_eq!(exchange(addr, &post("msg_x", now, BODY, wrong)).await.status, 401);
    let no_timestamp = request(
        "POST",
        PATH.as_bytes(),
        &[JSON, ("webhook-id", "msg_y"), ("webhook-signature", &several)],
        BODY.as_bytes(),
    );
    assert_eq!(exchange(addr, &no_timestamp).await.status, 401);

    // The name of the secret that matched is recorded with the event, never the secret.
    let id: uuid::Uuid = event_id(&first).as_str().and_then(|v| v.parse().ok()).expect("uuid");
    wait_applied(&env, id, Duration::from_secs(10)).await;
    let signer = env
        .count(&format!(
            "SELECT count(*) FROM activity_logs WHERE event_id = '{id}' AND signer = 'aligner-co'"
        ))
        .await;
    assert_eq!(signer, 1);
    let legacy = exchange(addr, &signed(PATH, BODY.as_bytes(), &[])).await;
    let legacy_id: uuid::Uuid =
        event_id(&legacy).as_str().and_then(|v| v.parse().ok()).expect("uuid");
    wait_applied(&env, legacy_id, Duration::from_secs(10)).await;
    let named = env
        .count(&format!(
            "SELECT count(*) FROM activity_logs WHERE event_id = '{legacy_id}' AND signer = 'legacy'"
        ))
        .await;
    assert_eq!(named, 1);
}
