//! `scanhook send`: one signed scan notification to a gateway, and its answer, as a scanner
//! vendor would send it.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use scanhook_gateway::signature::{sign, sign_standard};

/// How long connecting and the whole exchange may take.
const TIMEOUT: Duration = Duration::from_secs(15);

pub struct Notification {
    /// The gateway's base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    pub patient_id: String,
    pub body: String,
    pub secret: String,
    pub idempotency_key: Option<String>,
    pub request_id: Option<String>,
    /// Sign the Standard Webhooks way, with this webhook-id.
    pub webhook_id: Option<String>,
}

/// What the gateway answered.
pub struct Answer {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The status line, the headers a sender acts on, and the body (pretty when JSON).
    pub fn render(&self) -> String {
        let mut out = format!("HTTP {} {}\n", self.status, self.reason);
        for (name, value) in &self.headers {
            out.push_str(&format!("{name}: {value}\n"));
        }
        let body = serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|json| serde_json::to_string_pretty(&json).ok())
            .unwrap_or_else(|| self.body.clone());
        out.push('\n');
        out.push_str(&body);
        out
    }
}

pub async fn send(notification: &Notification) -> Result<Answer, String> {
    tokio::time::timeout(TIMEOUT, exchange(notification))
        .await
        .map_err(|_| format!("no answer from {} within {TIMEOUT:?}", notification.url))?
}

async fn exchange(n: &Notification) -> Result<Answer, String> {
    let base: Uri = n.url.parse().map_err(|e| format!("--url {:?}: {e}", n.url))?;
    match base.scheme_str() {
        Some("http") => {}
        // TODO: no TLS client is built in; send to an https gateway through a local proxy.
        Some("https") => return Err("https is not supported by scanhook send; use http".into()),
        _ => return Err(format!("--url {:?} must start with http://", n.url)),
    }
    let host = base.host().ok_or_else(|| format!("--url {:?} has no host", n.url))?;
    let port = base.port_u16().unwrap_or(80);
    let path = format!(
        "{}/v1/webhooks/scans/{}",
        base.path().trim_end_matches('/'),
        percent_encode(&n.patient_id)
    );

    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {host}:{port} failed: {e}"))?;
    tokio::spawn(connection);

    let authority = base.authority().map_or_else(|| host.to_owned(), ToString::to_string);
    let mut request = Request::post(path)
        .header("host", authority)
        .header("content-type", "application/json")
        .header("user-agent", concat!("scanhook-send/", env!("CARGO_PKG_VERSION")));
    match &n.webhook_id {
        None => {
            request = request.header("x-webhook-signature", sign(&n.secret, n.body.as_bytes()));
        }
        Some(id) => {
            let timestamp = chrono::Utc::now().timestamp();
            let signature = sign_standard(&n.secret, id, timestamp, n.body.as_bytes())
                .ok_or("the secret starts with whsec_ but the rest is not base64")?;
            request = request
                .header("webhook-id", id.as_str())
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature);
        }
    }
    if let Some(key) = &n.idempotency_key {
        request = request.header("idempotency-key", key.as_str());
    }
    if let Some(id) = &n.request_id {
        request = request.header("x-request-id", id.as_str());
    }
    let request = request
        .body(Full::new(Bytes::copy_from_slice(n.body.as_bytes())))
        .map_err(|e| format!("cannot build the request: {e}"))?;

    let response =
        sender.send_request(request).await.map_err(|e| format!("request failed: {e}"))?;
    let status = response.status();
    let headers = ["x-request-id", "retry-after", "allow"]
        .iter()
        .filter_map(|name| {
            let value = response.headers().get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer failed: {e}"))?
        .to_bytes();
    Ok(Answer {
        status: status.as_u16(),
        reason: status.canonical_reason().unwrap_or_default().to_owned(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Escapes everything but the unreserved characters of RFC 3986, so any id reaches the gateway
/// as typed (and gets its documented answer there).
fn percent_encode(segment: &str) -> String {
    segment.bytes().fold(String::with_capacity(segment.len()), |mut out, b| {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
        out
    })
}
