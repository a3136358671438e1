//! The event the gateway queues and the worker applies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

/// A scan notification accepted by the gateway, as it travels through the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScanEvent {
    /// UUID v7; also the AMQP `message_id`.
    pub event_id: Uuid,
    pub patient_id: String,
    pub case_id: i64,
    pub case_number: String,
    pub scan_id: i64,
    /// The whole JSON body the scanner sent, byte for byte.
    pub payload: Box<RawValue>,
    pub received_at: DateTime<Utc>,
    /// Name of the configured secret that signed the request (never the secret itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

impl ScanEvent {
    pub fn to_json(&self) -> Vec<u8> {
        // A struct of plain fields and already-valid JSON cannot fail to serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_survives_the_round_trip_byte_for_byte() {
        let body = r#"{ "scan_id" : 7, "note":"caf\u00e9" }"#;
        let event = ScanEvent {
            event_id: Uuid::now_v7(),
            patient_id: "605914".into(),
            case_id: 1,
            case_number: "CASE-1".into(),
            scan_id: 7,
            payload: RawValue::from_string(body.to_owned()).expect("valid json"),
            received_at: Utc::now(),
            signer: Some("acme".into()),
        };
        let decoded = ScanEvent::from_json(&event.to_json()).expect("decodes");
        assert_eq!(decoded.payload.get(), body);
        assert_eq!(decoded.event_id, event.event_id);
        assert_eq!(decoded.received_at, event.received_at);
        assert_eq!(decoded.signer.as_deref(), Some("acme"));
    }
}
