//! The admin listener of each binary, apart from the traffic it serves: `GET /metrics`
//! (Prometheus text format), `GET /healthz` (the process answers) and `GET /readyz` (its
//! database and broker are reachable; 503 otherwise). Answers use the service's envelope.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// How long all readiness checks together, and each one, may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
const EACH_CHECK_TIMEOUT: Duration = Duration::from_millis(1500);

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a binary reports about itself.
pub trait Status: Send + Sync + 'static {
    /// Each dependency and whether it is reachable now.
    fn readiness(&self) -> BoxFuture<Vec<(&'static str, bool)>>;
    /// Brings the gauges read from pools up to date before a scrape.
    fn record_gauges(&self) {}
}

/// Serves the admin routes on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    status: Arc<dyn Status>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let (metrics, status) = (metrics.clone(), Arc::clone(&status));
                    let service = service_fn(move |request| {
                        let (metrics, status) = (metrics.clone(), Arc::clone(&status));
                        async move { Ok::<_, Infallible>(answer(request, &metrics, &*status).await) }
                    });
                    let connection = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(5))
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            debug!(error = %err, "admin connection ended with an error");
                        }
                    });
                }
                Err(err) => {
                    warn!(error = %err, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = &mut shutdown => break,
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    metrics: &PrometheusHandle,
    status: &dyn Status,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return envelope(StatusCode::METHOD_NOT_ALLOWED, false, "Method not allowed", Value::Null);
    }
    match request.uri().path() {
        "/metrics" => {
            status.record_gauges();
            let mut response = Response::new(Full::new(Bytes::from(metrics.render())));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => envelope(StatusCode::OK, true, "Alive", Value::Null),
        "/readyz" => {
            let checks = tokio::time::timeout(CHECK_TIMEOUT, status.readiness()).await;
            let checks = checks.unwrap_or_default();
            let ready = !checks.is_empty() && checks.iter().all(|(_, ok)| *ok);
            let data: Map<String, Value> =
                checks.into_iter().map(|(name, ok)| (name.to_owned(), Value::Bool(ok))).collect();
            if ready {
                envelope(StatusCode::OK, true, "Ready", Value::Object(data))
            } else {
                envelope(StatusCode::SERVICE_UNAVAILABLE, false, "Not ready", Value::Object(data))
            }
        }
        _ => envelope(StatusCode::NOT_FOUND, false, "Not found", Value::Null),
    }
}

fn envelope(status: StatusCode, ok: bool, message: &str, data: Value) -> Response<Full<Bytes>> {
    let body = json!({ "status": ok, "message": message, "data": data }).to_string();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Binds a binary's admin address, naming the variable that sets it when that fails; an empty
/// address means no admin listener.
pub async fn open(address: &str, variable: &str) -> Result<Option<TcpListener>, String> {
    bind(address)
        .await
        .map_err(|err| format!("cannot open the admin listener on {address:?} ({variable}): {err}"))
}

/// Serves the admin routes on `listener` in the background for as long as the process runs,
/// and logs where.
pub fn spawn(listener: TcpListener, metrics: PrometheusHandle, status: Arc<dyn Status>) {
    if let Ok(address) = listener.local_addr() {
        info!(admin = %address, "admin listener ready (/metrics, /healthz, /readyz)");
    }
    tokio::spawn(serve(listener, metrics, status, std::future::pending()));
}

/// Whether a readiness check passed within its time; one that hangs counts as failed.
pub async fn check(passed: impl Future<Output = bool>) -> bool {
    tokio::time::timeout(EACH_CHECK_TIMEOUT, passed).await.unwrap_or(false)
}

/// Binds the admin address of a binary; an empty address means no admin listener.
pub async fn bind(address: &str) -> std::io::Result<Option<TcpListener>> {
    let address = address.trim();
    if address.is_empty() {
        return Ok(None);
    }
    TcpListener::bind(address).await.map(Some)
}
