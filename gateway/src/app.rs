//! One request, from the raw HTTP exchange to the answer: verify, decode, look up, publish.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use sea_orm::DatabaseConnection;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tracing::{Instrument, info, warn};
use uuid::Uuid;

use scanhook_shared::admin::{self, BoxFuture, Status};
use scanhook_shared::broker::{PublishError, Publisher};
use scanhook_shared::config::millis;
use scanhook_shared::topology::{HEADER_REQUEST_ID, long_string};
use scanhook_shared::trace::{TRACEPARENT, TraceContext};
use scanhook_shared::{ScanEvent, Settings, Topology, db};

use crate::access::{Access, BadNetwork};
use crate::body::parse_scan_id;
use crate::idempotency;
use crate::lookup::{ActiveCase, CaseCache, find_active_case};
use crate::patient::PatientId;
use crate::response::{Accepted, HttpResponse, Rejection, accepted};
use crate::signature::{SecretsError, StandardHeaders, Verifier};

const ROUTE_PREFIX: &str = "/v1/webhooks/scans/";
const SIGNATURE_HEADER: &str = "x-webhook-signature";
const STANDARD_ID_HEADER: &str = "webhook-id";
const STANDARD_TIMESTAMP_HEADER: &str = "webhook-timestamp";
const STANDARD_SIGNATURE_HEADER: &str = "webhook-signature";
const REQUEST_ID_HEADER: &str = "x-request-id";
/// The `route` label of requests to the one route, and of every other path.
const ROUTE_LABEL: &str = "/v1/webhooks/scans/{patient_id}";
const OTHER_ROUTE_LABEL: &str = "unmatched";

/// Everything a request needs, built once at start-up.
pub struct App {
    verifier: Verifier,
    access: Access,
    db: DatabaseConnection,
    publisher: Publisher,
    cases: CaseCache,
    queue: String,
    in_flight: Semaphore,
    max_in_flight: usize,
    max_body_bytes: usize,
    max_header_bytes: usize,
    body_timeout: Duration,
    retry_after_secs: u32,
    query_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("webhook.secret: {0}")]
    Secrets(#[from] SecretsError),
    #[error(transparent)]
    Network(#[from] BadNetwork),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
    #[error("broker: {0}")]
    Broker(#[from] PublishError),
}

impl App {
    /// Connects to the database and the broker and declares the queue topology.
    pub async fn connect(settings: &Settings) -> Result<Self, StartError> {
        let gateway = &settings.gateway;
        let verifier =
            Verifier::new(&settings.webhook_secrets(), settings.webhook.timestamp_tolerance_secs)?;
        let access = Access::new(&gateway.allow_cidrs, &gateway.trusted_proxies)?;
        let db = db::connect_lazy(&settings.database).await?;
        if let Err(err) = db.ping().await {
            warn!(error = %err, "database not reachable yet; answering 503 until it is");
        }
        let publisher = Publisher::new(
            &settings.amqp.url,
            "scanhook-gateway",
            settings.gateway.publish_channels,
            millis(settings.amqp.confirm_timeout_ms),
        )?;
        let topology = Topology::new(&settings.amqp.queue, &settings.retry_delays());
        let channel = publisher.channel().await?;
        topology
            .declare(&channel, settings.amqp.delivery_limit)
            .await
            .map_err(PublishError::from)?;
        drop(channel);

        Ok(Self {
            verifier,
            access,
            db,
            publisher,
            cases: CaseCache::new(gateway.case_cache_capacity, millis(gateway.case_cache_ttl_ms)),
            queue: topology.work,
            in_flight: Semaphore::new(gateway.max_in_flight.max(1)),
            max_in_flight: gateway.max_in_flight.max(1),
            max_body_bytes: gateway.max_body_bytes,
            max_header_bytes: gateway.max_header_bytes,
            body_timeout: millis(gateway.body_timeout_ms),
            retry_after_secs: gateway.retry_after_secs,
            query_timeout: millis(settings.database.query_timeout_ms),
        })
    }

    /// What the admin listener reports of this gateway: readiness and pool gauges.
    pub fn status(self: &Arc<Self>) -> Arc<dyn Status> {
        Arc::new(GatewayStatus(Arc::clone(self)))
    }

    /// Answers one request from `peer`, and leaves one log line and its metrics saying how it
    /// went.
    pub async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let started = Instant::now();
        let request_id = request_id(request.headers());
        let trace = TraceContext::continue_from(
            request.headers().get(TRACEPARENT).map(HeaderValue::as_bytes),
        );
        let client = self.access.client(peer, request.headers());
        let route_label =
            if route(request.uri().path()).is_ok() { ROUTE_LABEL } else { OTHER_ROUTE_LABEL };
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            trace_id = %trace.trace_id_hex(),
            span_id = %trace.span_id_hex(),
            client = %client.map_or_else(|| "unknown".to_owned(), |ip| ip.to_string()),
            patient_id = tracing::field::Empty,
            signer = tracing::field::Empty,
        );

        let mut signer = None;
        let outcome = match self.in_flight.try_acquire() {
            Ok(_permit) => {
                self.process(request, client, &request_id, &trace, &mut signer)
                    .instrument(span.clone())
                    .await
            }
            Err(_) => Err(Rejection::Overloaded),
        };
        let elapsed = started.elapsed().as_secs_f64();
        let latency_ms = elapsed * 1000.0;
        let (status, reason) = match &outcome {
            Ok(_) => (202, "accepted"),
            Err(rejection) => (rejection.status().as_u16(), rejection.reason()),
        };
        metrics::counter!(
            "scanhook_http_requests_total",
            "route" => route_label,
            "status" => status.to_string(),
            "reason" => reason,
            "signer" => signer.unwrap_or("none").to_owned(),
        )
        .increment(1);
        metrics::histogram!("scanhook_http_request_duration_seconds", "route" => route_label)
            .record(elapsed);
        let mut response = match outcome {
            Ok((response, event_id)) => {
                span.in_scope(
                    || info!(status = 202, outcome = "accepted", %event_id, latency_ms, "request"),
                );
                response
            }
            Err(rejection) => {
                span.in_scope(|| match &rejection {
                    Rejection::Unavailable(_) | Rejection::Internal(_) => warn!(
                        status, outcome = "failed", reason = rejection.reason(), error = %rejection, latency_ms, "request"
                    ),
                    _ => info!(status, outcome = "rejected", reason = rejection.reason(), latency_ms, "request"),
                });
                rejection.into_response(self.retry_after_secs)
            }
        };
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(REQUEST_ID_HEADER, value);
        }
        response
    }

    /// The checks in their documented order; the first that fails answers.
    async fn process<'a>(
        &'a self,
        request: Request<Incoming>,
        client: Option<IpAddr>,
        request_id: &str,
        trace: &TraceContext,
        signer_seen: &mut Option<&'a str>,
    ) -> Result<(HttpResponse, Uuid), Rejection> {
        let (parts, body) = request.into_parts();
        if !self.access.allows(client) {
            return Err(Rejection::Forbidden);
        }
        let segment = route(parts.uri.path())?;
        if parts.method != Method::POST {
            return Err(Rejection::MethodNotAllowed);
        }
        tracing::Span::current().record("patient_id", segment);
        let header_bytes = header_bytes(&parts.headers);
        if header_bytes > self.max_header_bytes {
            return Err(Rejection::HeadersTooLarge { limit: self.max_header_bytes });
        }
        let signature = Signature::from_headers(&parts.headers)?;
        content_type(&parts.headers)?;

        let body = self.read_body(&parts.headers, body).await?;
        let signed = match &signature {
            Signature::Hmac(header) => self.verifier.verify(header, &body),
            Signature::Standard(headers) => {
                self.verifier.verify_standard(*headers, &body, Utc::now().timestamp())
            }
        };
        let signer = signed.map_err(|e| Rejection::InvalidSignature(e.reason()))?;
        tracing::Span::current().record("signer", signer);
        *signer_seen = Some(signer);

        let idempotency_key = match &signature {
            // The signed webhook-id is the sender's identity of the message.
            Signature::Standard(headers) => std::str::from_utf8(headers.id).ok(),
            Signature::Hmac(_) => idempotency::key(&parts.headers)?,
        };
        let scan_id = parse_scan_id(&body)?;
        let patient = PatientId::parse(segment).ok_or(Rejection::CaseNotFound)?;

        let case = self.active_case(&patient).await?;

        let event_id = idempotency::event_id(&patient, idempotency_key);
        let event = scan_event(event_id, &patient, &case, scan_id, &body, signer)?;
        self.publish(&event, request_id, trace).await?;

        let data = Accepted {
            patient_id: patient.as_str(),
            case_number: &case.case_number,
            event_id: event.event_id,
        };
        Ok((accepted(&data), event.event_id))
    }

    /// The whole body, refusing it from its declared length or once it grows past the limit.
    async fn read_body(&self, headers: &HeaderMap, body: Incoming) -> Result<Bytes, Rejection> {
        let limit = self.max_body_bytes;
        let declared = headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(Rejection::PayloadTooLarge { limit });
        }
        let reading = tokio::time::timeout(self.body_timeout, Limited::new(body, limit).collect());
        match reading.await {
            Err(_) => Err(Rejection::BodyTimeout),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(err)) if err.is::<http_body_util::LengthLimitError>() => {
                Err(Rejection::PayloadTooLarge { limit })
            }
            Ok(Err(err)) => Err(Rejection::UnreadableBody(err.to_string())),
        }
    }

    async fn active_case(&self, patient: &PatientId) -> Result<ActiveCase, Rejection> {
        if let Some(case) = self.cases.get(patient) {
            return Ok(case);
        }
        let case = self.look_up_case(patient).await?;
        self.cases.insert(patient, &case);
        Ok(case)
    }

    async fn look_up_case(&self, patient: &PatientId) -> Result<ActiveCase, Rejection> {
        let lookup = tokio::time::timeout(self.query_timeout, find_active_case(&self.db, patient));
        match lookup.await {
            Err(_) => Err(Rejection::Unavailable("case lookup timed out".into())),
            Ok(Err(err)) if db::is_unavailable(&err) => {
                Err(Rejection::Unavailable(err.to_string()))
            }
            Ok(Err(err)) => Err(Rejection::Internal(err.to_string())),
            Ok(Ok(None)) => Err(Rejection::CaseNotFound),
            Ok(Ok(Some(case))) => Ok(case),
        }
    }

    async fn publish(
        &self,
        event: &ScanEvent,
        request_id: &str,
        trace: &TraceContext,
    ) -> Result<(), Rejection> {
        let mut headers = FieldTable::default();
        headers.insert(HEADER_REQUEST_ID.into(), long_string(request_id));
        headers.insert(TRACEPARENT.into(), long_string(&trace.header()));
        let properties = BasicProperties::default()
            .with_message_id(event.event_id.to_string().into())
            .with_content_type("application/json".into())
            .with_timestamp(u64::try_from(event.received_at.timestamp()).unwrap_or_default())
            .with_headers(headers);
        self.publisher
            .publish(&self.queue, &event.to_json(), properties)
            .await
            .map_err(|err| Rejection::Unavailable(err.to_string()))
    }
}

/// The gateway as its admin listener sees it.
struct GatewayStatus(Arc<App>);

impl Status for GatewayStatus {
    fn readiness(&self) -> BoxFuture<Vec<(&'static str, bool)>> {
        let app = Arc::clone(&self.0);
        Box::pin(async move {
            let database = admin::check(async { app.db.ping().await.is_ok() });
            let broker = admin::check(app.publisher.is_reachable());
            let (database, broker) = tokio::join!(database, broker);
            vec![("database", database), ("broker", broker)]
        })
    }

    fn record_gauges(&self) {
        let app = &self.0;
        scanhook_shared::metrics::record_database_pool(&app.db, "gateway");
        app.publisher.record_metrics("gateway");
        let in_flight = app.max_in_flight.saturating_sub(app.in_flight.available_permits());
        metrics::gauge!("scanhook_http_requests_in_flight").set(in_flight as f64);
    }
}

/// The `patient_id` segment of the one route, or a 404 for any other path.
fn route(path: &str) -> Result<&str, Rejection> {
    match path.strip_prefix(ROUTE_PREFIX) {
        Some(segment) if !segment.contains('/') => Ok(segment),
        _ => Err(Rejection::NotFound),
    }
}

/// How a request is signed.
enum Signature<'a> {
    /// `X-Webhook-Signature`.
    Hmac(&'a [u8]),
    /// Standard Webhooks; only when `X-Webhook-Signature` is absent.
    Standard(StandardHeaders<'a>),
}

impl<'a> Signature<'a> {
    fn from_headers(headers: &'a HeaderMap) -> Result<Self, Rejection> {
        if let Some(value) = single(headers, SIGNATURE_HEADER)? {
            return Ok(Self::Hmac(value));
        }
        let Some(signature) = single(headers, STANDARD_SIGNATURE_HEADER)? else {
            return Err(Rejection::MissingSignature);
        };
        let missing = Rejection::InvalidSignature("standard_headers_missing");
        Ok(Self::Standard(StandardHeaders {
            id: single(headers, STANDARD_ID_HEADER)?.ok_or(missing)?,
            timestamp: single(headers, STANDARD_TIMESTAMP_HEADER)?
                .ok_or(Rejection::InvalidSignature("standard_headers_missing"))?,
            signature,
        }))
    }
}

/// A signature header's value: `None` when absent or empty; sent twice, a 401.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a [u8]>, Rejection> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().map(HeaderValue::as_bytes).unwrap_or_default();
    if values.next().is_some() {
        return Err(Rejection::InvalidSignature("signature_header_repeated"));
    }
    Ok((!first.is_empty()).then_some(first))
}

/// `application/json` in any letter case, with parameters, but no charset other than UTF-8.
fn content_type(headers: &HeaderMap) -> Result<(), Rejection> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(Rejection::UnsupportedMediaType);
    };
    let value = value.to_str().map_err(|_| Rejection::UnsupportedMediaType)?;
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(Rejection::UnsupportedMediaType);
    }
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        if name.trim().eq_ignore_ascii_case("charset")
            && !value.eq_ignore_ascii_case("utf-8")
            && !value.eq_ignore_ascii_case("utf8")
        {
            return Err(Rejection::UnsupportedMediaType);
        }
    }
    Ok(())
}

/// Bytes of the header lines as sent: name, `: `, value and line end.
fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

/// The caller's `X-Request-Id` when it is a short token, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| Uuid::now_v7().to_string(), str::to_owned)
}

fn scan_event(
    event_id: Uuid,
    patient: &PatientId,
    case: &ActiveCase,
    scan_id: i64,
    body: &Bytes,
    signer: &str,
) -> Result<ScanEvent, Rejection> {
    // The body was parsed as JSON already, so it is valid UTF-8 and valid JSON here.
    let text = std::str::from_utf8(body).map_err(|e| Rejection::Internal(e.to_string()))?;
    let payload = RawValue::from_string(text.trim().to_owned())
        .map_err(|e| Rejection::Internal(e.to_string()))?;
    Ok(ScanEvent {
        event_id,
        patient_id: patient.as_str().to_owned(),
        case_id: case.id,
        case_number: case.case_number.clone(),
        scan_id,
        payload,
        received_at: Utc::now(),
        signer: Some(signer.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_scan_route_matches() {
        assert_eq!(route("/v1/webhooks/scans/605914").ok(), Some("605914"));
        assert_eq!(route("/v1/webhooks/scans/").ok(), Some(""));
        for other in [
            "/",
            "/v1/webhooks/scans",
            "/v1/webhooks/scans/1/",
            "/v1/webhooks/scans/a/b",
            "/v2/webhooks/scans/1",
        ] {
            assert!(matches!(route(other), Err(Rejection::NotFound)), "{other}");
        }
    }

    #[test]
    fn request_ids_are_kept_only_when_tame() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID_HEADER, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
    }
}
