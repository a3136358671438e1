//! The response envelope `{"status", "message", "data"}` and the answers the gateway gives.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

use crate::body::BodyError;
use crate::idempotency::InvalidKey;

pub type HttpResponse = Response<Full<Bytes>>;

pub const MSG_ACCEPTED: &str = "Scan update processed successfully";

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    status: bool,
    message: &'a str,
    data: Option<T>,
}

/// What is returned in `data` with a 202.
#[derive(Serialize)]
pub struct Accepted<'a> {
    pub patient_id: &'a str,
    pub case_number: &'a str,
    pub event_id: uuid::Uuid,
}

/// Every way a request can be refused, each with exactly one answer.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    #[error("too many requests in flight")]
    Overloaded,
    #[error("client address not in the allowlist")]
    Forbidden,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("header lines larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("signature header missing or empty")]
    MissingSignature,
    #[error("content type not JSON")]
    UnsupportedMediaType,
    #[error("body not received in time")]
    BodyTimeout,
    #[error("signature invalid: {0}")]
    InvalidSignature(&'static str),
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("body could not be read: {0}")]
    UnreadableBody(String),
    #[error("{0}")]
    InvalidBody(#[from] BodyError),
    #[error("{0}")]
    InvalidIdempotencyKey(#[from] InvalidKey),
    #[error("no active case for the patient")]
    CaseNotFound,
    #[error("dependency unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Rejection {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound | Self::CaseNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::MissingSignature | Self::UnreadableBody(_) | Self::InvalidIdempotencyKey(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::InvalidSignature(_) => StatusCode::UNAUTHORIZED,
            Self::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::InvalidBody(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message the client sees: the contract's wording, never internal detail.
    pub fn message(&self) -> Cow<'static, str> {
        match self {
            Self::Forbidden => "Client address not allowed".into(),
            Self::NotFound => "Not found".into(),
            Self::MethodNotAllowed => "Method not allowed".into(),
            Self::MissingSignature => "Missing webhook signature".into(),
            Self::InvalidSignature(_) => "Invalid webhook signature".into(),
            Self::HeadersTooLarge { limit } => {
                format!("Request headers too large (limit {limit} bytes)").into()
            }
            Self::UnsupportedMediaType => "Content-Type must be application/json (UTF-8)".into(),
            Self::BodyTimeout => "Request body not received in time".into(),
            Self::PayloadTooLarge { limit } => {
                format!("Request body too large (limit {limit} bytes)").into()
            }
            Self::UnreadableBody(_) => "Request body could not be read".into(),
            Self::InvalidBody(err) => err.to_string().into(),
            Self::InvalidIdempotencyKey(_) => {
                "Invalid Idempotency-Key header (1 to 255 visible ASCII characters, sent once)"
                    .into()
            }
            Self::CaseNotFound => "Case With Patient ID not found".into(),
            Self::Unavailable(_) | Self::Overloaded => "Service temporarily unavailable".into(),
            Self::Internal(_) => "Internal server error".into(),
        }
    }

    /// A short, stable name for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Overloaded => "overloaded",
            Self::Forbidden => "client_not_allowed",
            Self::NotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::MissingSignature => "signature_missing",
            Self::InvalidSignature(why) => why,
            Self::HeadersTooLarge { .. } => "headers_too_large",
            Self::UnsupportedMediaType => "content_type_unsupported",
            Self::BodyTimeout => "body_timeout",
            Self::PayloadTooLarge { .. } => "body_too_large",
            Self::UnreadableBody(_) => "body_unreadable",
            Self::InvalidBody(err) => err.reason(),
            Self::InvalidIdempotencyKey(_) => "idempotency_key_invalid",
            Self::CaseNotFound => "case_not_found",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    pub fn into_response(self, retry_after_secs: u32) -> HttpResponse {
        let mut response = envelope::<()>(self.status(), false, &self.message(), None);
        let headers = response.headers_mut();
        match self {
            Self::MethodNotAllowed => {
                headers.insert(ALLOW, HeaderValue::from_static("POST"));
            }
            Self::Unavailable(_) | Self::Overloaded => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            // The rest of the body may still be on its way: the connection cannot be reused.
            Self::BodyTimeout | Self::PayloadTooLarge { .. } => {
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

pub fn accepted(data: &Accepted<'_>) -> HttpResponse {
    envelope(StatusCode::ACCEPTED, true, MSG_ACCEPTED, Some(data))
}

fn envelope<T: Serialize>(
    status: StatusCode,
    ok: bool,
    message: &str,
    data: Option<T>,
) -> HttpResponse {
    let body = serde_json::to_vec(&Envelope { status: ok, message, data }).unwrap_or_else(|_| {
        br#"{"status":false,"message":"Internal server error","data":null}"#.to_vec()
    });
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
