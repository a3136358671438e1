//! `X-Webhook-Signature: sha256=<hex>`: HMAC-SHA256 of the raw body under a shared secret.

use ring::hmac;

use scanhook_shared::Secret;

const PREFIX: &str = "sha256=";
const DIGEST_LEN: usize = 32;

/// The configured secrets as HMAC keys, ready for every request.
pub struct Verifier {
    keys: Vec<hmac::Key>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the header does not have the form sha256=<64 hex digits>")]
    Malformed,
    #[error("no configured secret produces this signature")]
    Mismatch,
}

impl Verifier {
    pub fn new(secrets: &[Secret]) -> Self {
        let keys = secrets
            .iter()
            .map(|secret| hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes()))
            .collect();
        Self { keys }
    }

    /// Checks `header` against the exact `body` bytes. Every key is tried, whatever the
    /// outcome of the others, and each comparison is constant time.
    pub fn verify(&self, header: &[u8], body: &[u8]) -> Result<(), SignatureError> {
        let digest = parse_header(header).ok_or(SignatureError::Malformed)?;
        let matched = self
            .keys
            .iter()
            .fold(false, |found, key| hmac::verify(key, body, &digest).is_ok() | found);
        if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
    }
}

/// `sha256=` and exactly 64 hex digits, either case, nothing around them.
fn parse_header(header: &[u8]) -> Option<[u8; DIGEST_LEN]> {
    let hex = header.strip_prefix(PREFIX.as_bytes())?;
    if hex.len() != DIGEST_LEN * 2 {
        return None;
    }
    let mut digest = [0u8; DIGEST_LEN];
    for (byte, pair) in digest.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
    }
    Some(digest)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The header value for `body` under `secret`, as a scanner would send it.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, body);
    let mut header = String::with_capacity(PREFIX.len() + DIGEST_LEN * 2);
    header.push_str(PREFIX);
    for byte in tag.as_ref() {
        header.push_str(&format!("{byte:02x}"));
    }
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// Vectors signed by an independent implementation (see the file's "about").
    const VECTORS: &str = include_str!("../testdata/signatures.json");

    #[derive(Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
        header_cases_for_first_body: Vec<HeaderCase>,
    }

    #[derive(Deserialize)]
    struct Vector {
        secret: String,
        body_utf8: String,
        body_len: usize,
        signature: String,
    }

    #[derive(Deserialize)]
    struct HeaderCase {
        header: String,
        valid: bool,
        why: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(VECTORS).expect("vector file parses")
    }

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(&[Secret::new(secret)])
    }

    #[test]
    fn every_vector_verifies_and_signs_identically() {
        let all = vectors();
        assert!(!all.vectors.is_empty());
        for v in &all.vectors {
            let body = v.body_utf8.as_bytes();
            assert_eq!(body.len(), v.body_len, "body length of {:?}", v.body_utf8);
            assert_eq!(verifier(&v.secret).verify(v.signature.as_bytes(), body), Ok(()));
            assert_eq!(sign(&v.secret, body), v.signature);
        }
    }

    #[test]
    fn a_changed_body_or_secret_fails() {
        for v in &vectors().vectors {
            let mut body = v.body_utf8.clone().into_bytes();
            body.push(b' ');
            let header = v.signature.as_bytes();
            assert_eq!(verifier(&v.secret).verify(header, &body), Err(SignatureError::Mismatch));
            let other = verifier("another-secret");
            assert_eq!(other.verify(header, v.body_utf8.as_bytes()), Err(SignatureError::Mismatch));
        }
    }

    #[test]
    fn header_cases_match_their_verdict() {
        let all = vectors();
        let first = &all.vectors[0];
        let check = verifier(&first.secret);
        for case in &all.header_cases_for_first_body {
            let outcome = check.verify(case.header.as_bytes(), first.body_utf8.as_bytes());
            assert_eq!(outcome.is_ok(), case.valid, "{}: {}", case.why, case.header);
        }
    }

    #[test]
    fn any_configured_secret_is_accepted() {
        let first = &vectors().vectors[0];
        let rotating = Verifier::new(&[Secret::new("old-secret"), Secret::new(&first.secret)]);
        let header = first.signature.as_bytes();
        assert_eq!(rotating.verify(header, first.body_utf8.as_bytes()), Ok(()));
    }

    #[test]
    fn surrounding_whitespace_and_other_forms_are_malformed() {
        let first = &vectors().vectors[0];
        let check = verifier(&first.secret);
        let body = first.body_utf8.as_bytes();
        for header in [
            format!(" {}", first.signature),
            format!("{} ", first.signature),
            first.signature.to_uppercase(),
            first.signature.replacen("sha256=", "sha256 =", 1),
            first.signature.replacen("sha256=", "sha256:", 1),
        ] {
            assert_eq!(check.verify(header.as_bytes(), body), Err(SignatureError::Malformed));
        }
    }
}
