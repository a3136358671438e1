//! What a scan notification body must be: a JSON object with a positive integer `scan_id`.

use serde_json::Value;

/// Why a body was refused; the message goes back to the sender as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("Request body must be UTF-8 encoded JSON")]
    NotUtf8,
    #[error("Request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("Request body must be a JSON object")]
    NotObject,
    #[error("scan_id is required")]
    MissingScanId,
    #[error("scan_id must be a positive integer")]
    ScanIdNotPositiveInteger,
    #[error("scan_id is out of range (at most 9223372036854775807)")]
    ScanIdOutOfRange,
}

impl BodyError {
    /// A short, stable name for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotUtf8 => "body_not_utf8",
            Self::NotJson(_) => "body_not_json",
            Self::NotObject => "body_not_object",
            Self::MissingScanId => "scan_id_missing",
            Self::ScanIdNotPositiveInteger => "scan_id_invalid",
            Self::ScanIdOutOfRange => "scan_id_out_of_range",
        }
    }
}

/// Checks the body and returns its `scan_id`; the body itself is kept by the caller as sent.
pub fn parse_scan_id(body: &[u8]) -> Result<i64, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let value: Value = serde_json::from_str(text).map_err(|e| BodyError::NotJson(describe(&e)))?;
    let object = value.as_object().ok_or(BodyError::NotObject)?;

    match object.get("scan_id") {
        None | Some(Value::Null) => Err(BodyError::MissingScanId),
        Some(Value::Number(n)) => {
            if let Some(id) = n.as_i64() {
                if id > 0 { Ok(id) } else { Err(BodyError::ScanIdNotPositiveInteger) }
            } else if n.is_u64() {
                Err(BodyError::ScanIdOutOfRange)
            } else {
                Err(BodyError::ScanIdNotPositiveInteger)
            }
        }
        Some(_) => Err(BodyError::ScanIdNotPositiveInteger),
    }
}

/// serde_json's message without its position suffix noise, position kept.
fn describe(err: &serde_json::Error) -> String {
    format!("{} at line {} column {}", category(err), err.line(), err.column())
}

fn category(err: &serde_json::Error) -> &'static str {
    use serde_json::error::Category;
    match err.classify() {
        Category::Eof => "unexpected end of input",
        Category::Syntax => "syntax error",
        Category::Data | Category::Io => "unreadable value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_positive_integers_and_extra_fields() {
        assert_eq!(parse_scan_id(br#"{"scan_id":1}"#), Ok(1));
        assert_eq!(parse_scan_id(br#"{"scan_id":42,"note":"caf\u00e9","x":[1]}"#), Ok(42));
        assert_eq!(parse_scan_id(b"{\"scan_id\":9223372036854775807}"), Ok(i64::MAX));
        assert_eq!(parse_scan_id(b" { \"scan_id\" : 3 }\n"), Ok(3));
    }

    #[test]
    fn refuses_each_bad_body_with_its_reason() {
        let cases: &[(&[u8], BodyError)] = &[
            (b"\xff\xfe", BodyError::NotUtf8),
            (b"[1,2]", BodyError::NotObject),
            (b"\"text\"", BodyError::NotObject),
            (b"{}", BodyError::MissingScanId),
            (br#"{"scan_id":null}"#, BodyError::MissingScanId),
            (br#"{"scan_id":"1"}"#, BodyError::ScanIdNotPositiveInteger),
            (br#"{"scan_id":1.5}"#, BodyError::ScanIdNotPositiveInteger),
            (br#"{"scan_id":1.0}"#, BodyError::ScanIdNotPositiveInteger),
            (br#"{"scan_id":0}"#, BodyError::ScanIdNotPositiveInteger),
            (br#"{"scan_id":-4}"#, BodyError::ScanIdNotPositiveInteger),
            (br#"{"scan_id":true}"#, BodyError::ScanIdNotPositiveInteger),
            (br#"{"scan_id":9223372036854775808}"#, BodyError::ScanIdOutOfRange),
            (br#"{"scan_id":99999999999999999999999}"#, BodyError::ScanIdNotPositiveInteger),
        ];
        for (body, expected) in cases {
            assert_eq!(
                parse_scan_id(body).as_ref(),
                Err(expected),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn invalid_json_names_the_position() {
        let err = parse_scan_id(b"{\"scan_id\":").expect_err("truncated");
        assert_eq!(err.reason(), "body_not_json");
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
