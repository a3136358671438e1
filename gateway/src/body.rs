//! What a scan notification body must be: a JSON object with a positive integer `scan_id`.
//!
//! The body is walked once, without building a tree: every object is checked for repeated keys
//! (which JSON parsers resolve differently, so an audit copy with them is ambiguous), the
//! `scan_id` value included, and the top-level `scan_id` is judged on the way. Only a `scan_id`
//! that is a number but not an `i64` needs a second look at its text, to tell `1.0` and `1e3`
//! from integers beyond 64 bits. Nesting is bounded by serde_json's recursion limit, and the
//! size by the gateway's body limit.

use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Deepest nesting of arrays and objects accepted, the top-level object counted (serde_json's
/// recursion limit).
pub const MAX_DEPTH: usize = 127;

/// Longest part of a repeated key quoted back to the sender.
const KEY_QUOTE_CHARS: usize = 64;

/// Why a body was refused; the message goes back to the sender as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("Request body must be UTF-8 encoded JSON")]
    NotUtf8,
    #[error("Request body is not valid JSON: {0}")]
    NotJson(String),
    #[error("Request body is nested too deeply (at most 127 levels of arrays and objects)")]
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
        Ok(Shape::Object { scan_id: Some(Verdict::Judged(verdict)) }) => verdict,
        Ok(Shape::Object { scan_id: Some(Verdict::NotAnI64) }) => Err(judge_number_text(text)),
        Err(err) => Err(match found.take() {
            Some(BodyError::DuplicateKey { key, .. }) => {
                BodyError::DuplicateKey { key, line: err.line(), column: err.column() }
            }
            Some(refusal) => refusal,
            None => syntax_error(&err),
        }),
    }
}

/// Why a `scan_id` that serde_json read as a float is not an `i64`, from the body's text. The
/// walk has already found the body valid, with `scan_id` once at the top, so this cannot fail
/// to find it.
fn judge_number_text(text: &str) -> BodyError {
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        scan_id: &'a RawValue,
    }
    let raw = serde_json::from_str::<Top<'_>>(text).map(|top| top.scan_id.get()).unwrap_or("");
    if raw.contains(['.', 'e', 'E']) {
        BodyError::ScanIdNotInteger
    } else if raw.starts_with('-') {
        BodyError::ScanIdNotPositive
    } else {
        BodyError::ScanIdOutOfRange
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
    Object { scan_id: Option<Verdict> },
}

/// What the walk found `scan_id` to be.
enum Verdict {
    Judged(Result<i64, BodyError>),
    /// A number serde_json could only read as a float: a fraction, an exponent, or too large.
    NotAnI64,
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
                scan_id = Some(map.next_value_seed(ScanId { found: self.found })?);
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

/// The top-level `scan_id` value: judged, and like any value checked for repeated keys.
struct ScanId<'a> {
    found: Found<'a>,
}

impl<'de> DeserializeSeed<'de> for ScanId<'_> {
    type Value = Verdict;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Verdict, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ScanId<'_> {
    type Value = Verdict;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a positive integer")
    }

    fn visit_u64<E: de::Error>(self, id: u64) -> Result<Verdict, E> {
        Ok(Verdict::Judged(match i64::try_from(id) {
            Ok(0) => Err(BodyError::ScanIdNotPositive),
            Ok(id) => Ok(id),
            Err(_) => Err(BodyError::ScanIdOutOfRange),
        }))
    }

    fn visit_i64<E: de::Error>(self, id: i64) -> Result<Verdict, E> {
        Ok(Verdict::Judged(if id > 0 { Ok(id) } else { Err(BodyError::ScanIdNotPositive) }))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Verdict, E> {
        Ok(Verdict::NotAnI64)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Verdict, E> {
        Ok(Verdict::Judged(Err(BodyError::ScanIdWrongType("a string"))))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Verdict, E> {
        Ok(Verdict::Judged(Err(BodyError::ScanIdWrongType("a boolean"))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Verdict, E> {
        Ok(Verdict::Judged(Err(BodyError::NullScanId)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Verdict, A::Error> {
        Checked { found: self.found }.visit_seq(seq)?;
        Ok(Verdict::Judged(Err(BodyError::ScanIdWrongType("an array"))))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Verdict, A::Error> {
        Checked { found: self.found }.visit_map(map)?;
        Ok(Verdict::Judged(Err(BodyError::ScanIdWrongType("an object"))))
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
            r#"{"scan_id":[{"":null,"":null}]}"#,
            r#"{"scan_id":{"k":1,"k":2}}"#,
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
        let deepest = MAX_DEPTH - 1;
        let fine = format!(r#"{{"scan_id":1,"x":{}{}}}"#, "[".repeat(deepest), "]".repeat(deepest));
        assert_eq!(parse_scan_id(fine.as_bytes()), Ok(1));
        let over =
            format!(r#"{{"scan_id":1,"x":{}{}}}"#, "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(parse_scan_id(over.as_bytes()), Err(BodyError::TooDeep));
        let inside =
            format!(r#"{{"scan_id":{}1{}}}"#, "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert_eq!(parse_scan_id(inside.as_bytes()), Err(BodyError::TooDeep));
    }
}
