//! Sender-chosen event identity. A request that carries `Idempotency-Key` (or `X-Webhook-Id`)
//! gets an event id derived from that key and the patient: every gateway derives the same id for
//! a resent request, and the worker applies an event id once, so a resend is applied once.

use http::HeaderMap;
use uuid::Uuid;

use crate::patient::PatientId;

/// Looked for in this order; the first present is the key.
pub const HEADERS: [&str; 2] = ["idempotency-key", "x-webhook-id"];
pub const MAX_LEN: usize = 255;

/// Namespace of the name-based (v5) event ids of keyed requests.
const NAMESPACE: Uuid = Uuid::from_u128(0x3f2b_8c1e_5a7d_4e90_b6c4_d2a1_9e8f_7c05);

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the idempotency key must be 1 to 255 visible ASCII characters, sent once")]
pub struct InvalidKey;

/// The request's idempotency key, if it has one.
pub fn key(headers: &HeaderMap) -> Result<Option<&str>, InvalidKey> {
    let Some(name) = HEADERS.into_iter().find(|name| headers.contains_key(*name)) else {
        return Ok(None);
    };
    let mut values = headers.get_all(name).iter();
    let value = values.next().map(|v| v.as_bytes()).unwrap_or_default();
    let visible = |b: &u8| (0x21..=0x7e).contains(b);
    if values.next().is_some()
        || value.is_empty()
        || value.len() > MAX_LEN
        || !value.iter().all(visible)
    {
        return Err(InvalidKey);
    }
    std::str::from_utf8(value).map(Some).map_err(|_| InvalidKey)
}

/// A new UUID v7 without a key; with one, the same UUID v5 for the same patient and key.
pub fn event_id(patient: &PatientId, key: Option<&str>) -> Uuid {
    match key {
        None => Uuid::now_v7(),
        Some(key) => {
            let name = format!("{}\n{key}", patient.as_str());
            Uuid::new_v5(&NAMESPACE, name.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn patient(id: &str) -> PatientId {
        PatientId::parse(id).expect("valid patient id")
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_same_key_and_patient_give_the_same_id() {
        let a = event_id(&patient("605914"), Some("order-1"));
        assert_eq!(a, event_id(&patient("605914"), Some("order-1")));
        assert_ne!(a, event_id(&patient("605915"), Some("order-1")));
        assert_ne!(a, event_id(&patient("605914"), Some("order-2")));
        assert_ne!(event_id(&patient("605914"), None), event_id(&patient("605914"), None));
    }

    #[test]
    fn idempotency_key_wins_over_webhook_id() {
        let both = headers(&[("x-webhook-id", "b"), ("idempotency-key", "a")]);
        assert_eq!(key(&both), Ok(Some("a")));
        assert_eq!(key(&headers(&[("x-webhook-id", "msg_1")])), Ok(Some("msg_1")));
        assert_eq!(key(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn bad_keys_are_refused() {
        let long: &'static str = Box::leak("k".repeat(MAX_LEN + 1).into_boxed_str());
        for bad in [
            headers(&[("idempotency-key", "")]),
            headers(&[("idempotency-key", "has space")]),
            headers(&[("idempotency-key", long)]),
            headers(&[("idempotency-key", "a"), ("idempotency-key", "b")]),
        ] {
            assert_eq!(key(&bad), Err(InvalidKey), "{bad:?}");
        }
    }
}
