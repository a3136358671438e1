//! What a scan notification body must be: a JSON object with a positive integer `scan_id`.
//!
//! The body is walked once, without building a tree: every object is checked for repeated keys
//! (which JSON parsers resolve differently, so an audit copy with them is ambiguous) and the
//! top-level `scan_id` is judged from its raw text, so that `1.0`, `1e3` and integers beyond
//! 64 bits are told apart from plain positive integers. Nesting is bounded by serde_json's
//! recursion limit, and the size by the gateway's body limit.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Deepest nesting of arrays and objects serde_json accepts.
pub const MAX_DEPTH: usize = 128;

/// Longest part of a repeated key quoted back to the sender.
const KEY_QUOTE_CHARS: usize = 64;

/// Why a body was refused; the message goes back to the sender as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("Request body must be UTF-8 encoded JSON")]
    NotUtf8,
    #[error("Request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("Request body is nested too deeply (at most 128 levels of arrays and objects)")]
    TooDeep,
    #[error("Request body has the key {key} more than once (line {line} column {column})")]
    DuplicateKey { key: String, line: usize, column: usize },
    #[error("Request body must be a JSON object")]
    NotObject,
    #[error("scan_id is required")]
    MissingScanId,
    #[error("scan_id must not be null")]
    NullScanId,
    #[error("scan_id must be a positive integer, not {0}")]
    ScanIdWrongType(&'static str),
    #[error("scan_id must be a positive integer, without a fraction or an exponent")]
    ScanIdNotInteger,
    #[error("scan_id must be a positive integer (greater than 0)")]
    ScanIdNotPositive,
    #[error("scan_id is out of range (at most 9223372036854775807)")]
    ScanIdOutOfRange,
}

impl BodyError {
    /// A short, stable name for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotUtf8 => "body_not_utf8",
            Self::NotJson(_) => "body_not_json",
            Self::TooDeep => "body_too_deep",
            Self::DuplicateKey { .. } => "body_duplicate_key",
            Self::NotObject => "body_not_object",
            Self::MissingScanId => "scan_id_missing",
            Self::NullScanId => "scan_id_null",
            Self::ScanIdWrongType(_) => "scan_id_wrong_type",
            Self::ScanIdNotInteger => "scan_id_not_integer",
            Self::ScanIdNotPositive => "scan_id_not_positive",
            Self::ScanIdOutOfRange => "scan_id_out_of_range",
        }
    }
}

/// Checks the body and returns its `scan_id`; the body itself is kept by the caller as sent.
pub fn parse_scan_id(body: &[u8]) -> Result<i64, BodyError> {
    let text = std::str::from_utf8(body).map_err(|_| BodyError::NotUtf8)?;
    let found = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let walked = Document { found: &found }
        .deserialize(&mut deserializer)
        .and_then(|shape| deserializer.end().map(|()| shape));
    match walked {
        Ok(Shape::NotObject) => Err(BodyError::NotObject),
        Ok(Shape::Object { scan_id: None }) => Err(BodyError::MissingScanId),
        Ok(Shape::Object { scan_id: Some(verdict) }) => verdict,
        Err(err) => Err(match found.take() {
            Some(BodyError::DuplicateKey { key, .. }) => {
                BodyError::DuplicateKey { key, line: err.line(), column: err.column() }
            }
            Some(refusal) => refusal,
            None => syntax_error(&err),
        }),
    }
}

/// Judges `scan_id` from its JSON text.
fn judge_scan_id(raw: &str) -> Result<i64, BodyError> {
    match raw.as_bytes().first() {
        Some(b'n') => Err(BodyError::NullScanId),
        Some(b'"') => Err(BodyError::ScanIdWrongType("a string")),
        Some(b't' | b'f') => Err(BodyError::ScanIdWrongType("a boolean")),
        Some(b'[') => Err(BodyError::ScanIdWrongType("an array")),
        Some(b'{') => Err(BodyError::ScanIdWrongType("an object")),
        _ if raw.contains(['.', 'e', 'E']) => Err(BodyError::ScanIdNotInteger),
        Some(b'-') => Err(BodyError::ScanIdNotPositive),
        _ => match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(id),
            Ok(_) => Err(BodyError::ScanIdNotPositive),
            Err(_) => Err(BodyError::ScanIdOutOfRange),
        },
    }
}

fn syntax_error(err: &serde_json::Error) -> BodyError {
    use serde_json::error::Category;
    let what = match err.classify() {
        Category::Eof => "unexpected end of input",
        Category::Syntax if err.to_string().starts_with("recursion limit exceeded") => {
            return BodyError::TooDeep;
        }
        Category::Syntax => "syntax error",
        Category::Data | Category::Io => "unreadable value",
    };
    BodyError::NotJson(format!("{what} at line {} column {}", err.line(), err.column()))
}

/// What the top level turned out to be.
enum Shape {
    NotObject,
    Object { scan_id: Option<Result<i64, BodyError>> },
}

/// Where a walk leaves the refusal it stopped on, since serde errors carry text only.
type Found<'a> = &'a Cell<Option<BodyError>>;

struct Document<'a> {
    found: Found<'a>,
}

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = Shape;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let mut keys = Keys::new(self.found);
        let mut scan_id = None;
        while let Some(key) = map.next_key_seed(KeyText)? {
            let is_scan_id = key == "scan_id";
            keys.insert::<A::Error>(key)?;
            if is_scan_id {
                let raw: &RawValue = map.next_value()?;
                scan_id = Some(judge_scan_id(raw.get()));
            } else {
                map.next_value_seed(Checked { found: self.found })?;
            }
        }
        Ok(Shape::Object { scan_id })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element_seed(Checked { found: self.found })?.is_some() {}
        Ok(Shape::NotObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::NotObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::NotObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::NotObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::NotObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::NotObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::NotObject)
    }
}

/// Any nested value: only checked for repeated keys.
struct Checked<'a> {
    found: Found<'a>,
}

impl<'de> DeserializeSeed<'de> for Checked<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Checked<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = Keys::new(self.found);
        while let Some(key) = map.next_key_seed(KeyText)? {
            keys.insert::<A::Error>(key)?;
            map.next_value_seed(Checked { found: self.found })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Checked { found: self.found })?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

/// The keys of one object so far.
struct Keys<'de, 'a> {
    seen: HashSet<Cow<'de, str>>,
    found: Found<'a>,
}

impl<'de, 'a> Keys<'de, 'a> {
    fn new(found: Found<'a>) -> Self {
        Self { seen: HashSet::new(), found }
    }

    fn insert<E: de::Error>(&mut self, key: Cow<'de, str>) -> Result<(), E> {
        if self.seen.contains(&key) {
            // serde_json adds the position to the error; it is copied from there by the caller.
            let quoted = quote(&key);
            self.found.set(Some(BodyError::DuplicateKey { key: quoted, line: 0, column: 0 }));
            return Err(E::custom("duplicate key"));
        }
        self.seen.insert(key);
        Ok(())
    }
}

/// The key as a JSON string, shortened when long.
fn quote(key: &str) -> String {
    let short: String = key.chars().take(KEY_QUOTE_CHARS).collect();
    let mut quoted = serde_json::to_string(&short).unwrap_or_default();
    if short.len() < key.len() {
        quoted.push_str("...");
    }
    quoted
}

/// An object key, borrowed from the body when it has no escapes.
struct KeyText;

impl<'de> DeserializeSeed<'de> for KeyText {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyText {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
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
        assert_eq!(parse_scan_id(br#"{"a":{"b":[{"c":1},{"c":2}]},"scan_id":5}"#), Ok(5));
    }

    #[test]
    fn refuses_each_bad_body_with_its_reason() {
        use BodyError::*;
        let cases: &[(&[u8], BodyError)] = &[
            (b"\xff\xfe", NotUtf8),
            (b"[1,2]", NotObject),
            (b"\"text\"", NotObject),
            (b"17", NotObject),
            (b"null", NotObject),
            (b"{}", MissingScanId),
            (br#"{"scan_id":null}"#, NullScanId),
            (br#"{"scan_id":"1"}"#, ScanIdWrongType("a string")),
            (br#"{"scan_id":true}"#, ScanIdWrongType("a boolean")),
            (br#"{"scan_id":[1]}"#, ScanIdWrongType("an array")),
            (br#"{"scan_id":{"id":1}}"#, ScanIdWrongType("an object")),
            (br#"{"scan_id":1.5}"#, ScanIdNotInteger),
            (br#"{"scan_id":1.0}"#, ScanIdNotInteger),
            (br#"{"scan_id":1e3}"#, ScanIdNotInteger),
            (br#"{"scan_id":0}"#, ScanIdNotPositive),
            (br#"{"scan_id":-0}"#, ScanIdNotPositive),
            (br#"{"scan_id":-4}"#, ScanIdNotPositive),
            (br#"{"scan_id":9223372036854775808}"#, ScanIdOutOfRange),
            (br#"{"scan_id":99999999999999999999999}"#, ScanIdOutOfRange),
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
    fn repeated_keys_are_refused_at_any_depth() {
        for body in [
            r#"{"scan_id":1,"scan_id":2}"#,
            r#"{"scan_id":1,"a":1,"a":1}"#,
            r#"{"scan_id":1,"x":{"b":1,"b":2}}"#,
            r#"{"scan_id":1,"x":[{"c":1},{"c":1,"c":1}]}"#,
            r#"{"scan_id":1,"\u0061":1,"a":2}"#,
        ] {
            let err = parse_scan_id(body.as_bytes()).expect_err(body);
            assert_eq!(err.reason(), "body_duplicate_key", "{body}: {err}");
        }
        // The same key in sibling objects is fine.
        assert_eq!(parse_scan_id(br#"{"scan_id":1,"x":[{"c":1},{"c":2}]}"#), Ok(1));
    }

    #[test]
    fn a_repeated_key_is_quoted_with_its_position() {
        let err =
            parse_scan_id(b"{\"scan_id\":1,\n\"tooth\":1,\"tooth\":2}").expect_err("repeated");
        assert_eq!(
            err.to_string(),
            "Request body has the key \"tooth\" more than once (line 2 column 17)"
        );
        let long = format!(r#"{{"scan_id":1,"{k}":1,"{k}":2}}"#, k = "k".repeat(500));
        let message = parse_scan_id(long.as_bytes()).expect_err("repeated").to_string();
        assert!(message.len() < 200, "{message}");
    }

    #[test]
    fn invalid_json_names_the_position() {
        let err = parse_scan_id(b"{\"scan_id\":").expect_err("truncated");
        assert_eq!(err.reason(), "body_not_json");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse_scan_id(b"{\"scan_id\":1} trailing").expect_err("trailing");
        assert_eq!(err.reason(), "body_not_json");
    }

    #[test]
    fn deep_nesting_is_refused_without_harm() {
        let deep = format!(r#"{{"scan_id":1,"x":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(parse_scan_id(deep.as_bytes()), Err(BodyError::TooDeep));
        let fine = format!(r#"{{"scan_id":1,"x":{}{}}}"#, "[".repeat(100), "]".repeat(100));
        assert_eq!(parse_scan_id(fine.as_bytes()), Ok(1));
    }
}
