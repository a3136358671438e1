//! Who signed a request. Two schemes over the same list of named secrets:
//!
//! - `X-Webhook-Signature: sha256=<hex>`: HMAC-SHA256 of the raw body under the secret's text;
//! - Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64> ...`):
//!   HMAC-SHA256 of `<id>.<timestamp>.<body>` under the secret, which for a `whsec_<base64>`
//!   secret is the decoded bytes, with the timestamp held to a tolerance against replays.
//!
//! Every configured secret is tried for every request, whatever the others gave, and each
//! comparison is constant time (`ring::hmac::verify`), so the answer's timing says nothing
//! about which secret or how much of a signature matched.

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::hmac;

use scanhook_shared::Secret;

const PREFIX: &str = "sha256=";
const DIGEST_LEN: usize = 32;
/// Prefix of Standard Webhooks secrets; what follows is the key in base64.
const STANDARD_SECRET_PREFIX: &str = "whsec_";
/// The one signature version Standard Webhooks defines.
const STANDARD_VERSION: &str = "v1";
/// Longest `webhook-id` taken (it becomes the idempotency key).
pub const MAX_WEBHOOK_ID_LEN: usize = 255;

/// One configured secret, under the name that logs, events and metrics show.
struct Signer {
    name: String,
    /// Key for `X-Webhook-Signature`: the secret's text.
    key: hmac::Key,
    /// Key for Standard Webhooks: the decoded bytes of a `whsec_` secret, else the text.
    standard_key: hmac::Key,
}

/// The configured secrets as HMAC keys, ready for every request.
pub struct Verifier {
    signers: Vec<Signer>,
    tolerance_secs: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is not of the expected form")]
    Malformed,
    #[error("no configured secret produces this signature")]
    Mismatch,
    #[error("webhook-timestamp is outside the accepted tolerance")]
    Stale,
}

impl SignatureError {
    /// A short, stable name for logs and metrics.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "signature_malformed",
            Self::Mismatch => "signature_mismatch",
            Self::Stale => "signature_timestamp_stale",
        }
    }
}

/// A secrets list that cannot be used; start-up stops on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("no secret configured")]
    Empty,
    #[error("the secret named {0:?} is empty")]
    EmptySecret(String),
    #[error("the name {0:?} is given to more than one secret")]
    DuplicateName(String),
    #[error("the secret named {0:?} starts with whsec_ but the rest is not base64")]
    BadStandardSecret(String),
}

/// The three Standard Webhooks headers, as received.
#[derive(Debug, Clone, Copy)]
pub struct StandardHeaders<'a> {
    pub id: &'a [u8],
    pub timestamp: &'a [u8],
    pub signature: &'a [u8],
}

impl Verifier {
    /// Keys for each entry of the secrets list; an entry is `secret` or `name:secret`, where
    /// `name` is 1 to 64 characters of `A-Za-z0-9._-`. Unnamed entries are called `secret-<n>`
    /// after their place in the list.
    pub fn new(entries: &[Secret], tolerance_secs: u64) -> Result<Self, SecretsError> {
        if entries.is_empty() {
            return Err(SecretsError::Empty);
        }
        let mut names = HashSet::new();
        let mut signers = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let (name, secret) = split_entry(entry.expose());
            let name = name.map_or_else(|| format!("secret-{}", index + 1), str::to_owned);
            if secret.is_empty() {
                return Err(SecretsError::EmptySecret(name));
            }
            if !names.insert(name.clone()) {
                return Err(SecretsError::DuplicateName(name));
            }
            let standard_bytes = match secret.strip_prefix(STANDARD_SECRET_PREFIX) {
                Some(encoded) => BASE64
                    .decode(encoded)
                    .map_err(|_| SecretsError::BadStandardSecret(name.clone()))?,
                None => secret.as_bytes().to_vec(),
            };
            signers.push(Signer {
                key: hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()),
                standard_key: hmac::Key::new(hmac::HMAC_SHA256, &standard_bytes),
                name,
            });
        }
        let tolerance_secs = i64::try_from(tolerance_secs).unwrap_or(i64::MAX);
        Ok(Self { signers, tolerance_secs })
    }

    /// Checks an `X-Webhook-Signature` value against the exact `body` bytes and returns the
    /// name of the secret that signed it.
    pub fn verify(&self, header: &[u8], body: &[u8]) -> Result<&str, SignatureError> {
        let digest = parse_header(header).ok_or(SignatureError::Malformed)?;
        self.first_match(|signer| hmac::verify(&signer.key, body, &digest).is_ok())
    }

    /// Checks Standard Webhooks headers against the exact `body` bytes at `now` (Unix
    /// seconds) and returns the name of the secret that signed them.
    pub fn verify_standard(
        &self,
        headers: StandardHeaders<'_>,
        body: &[u8],
        now: i64,
    ) -> Result<&str, SignatureError> {
        let timestamp = parse_timestamp(headers.timestamp).ok_or(SignatureError::Malformed)?;
        if !valid_webhook_id(headers.id) {
            return Err(SignatureError::Malformed);
        }
        let digests = parse_standard_signatures(headers.signature)?;
        let mut content =
            Vec::with_capacity(headers.id.len() + headers.timestamp.len() + body.len() + 2);
        content.extend_from_slice(headers.id);
        content.push(b'.');
        content.extend_from_slice(headers.timestamp);
        content.push(b'.');
        content.extend_from_slice(body);
        let name = self.first_match(|signer| {
            digests.iter().fold(false, |found, digest| {
                hmac::verify(&signer.standard_key, &content, digest).is_ok() | found
            })
        })?;
        if now.abs_diff(timestamp) > self.tolerance_secs.unsigned_abs() {
            return Err(SignatureError::Stale);
        }
        Ok(name)
    }

    /// The first signer `matches` accepts, after asking every one of them.
    fn first_match(&self, matches: impl Fn(&Signer) -> bool) -> Result<&str, SignatureError> {
        let mut found = None;
        for signer in &self.signers {
            if matches(signer) && found.is_none() {
                found = Some(signer.name.as_str());
            }
        }
        found.ok_or(SignatureError::Mismatch)
    }

    /// The names of the configured secrets, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.signers.iter().map(|signer| signer.name.as_str())
    }
}

/// The name and the secret of a secrets-list entry: `name:secret` when the part before the
/// first `:` is a name (1 to 64 characters of `A-Za-z0-9._-`), else no name and all of it.
pub fn split_entry(entry: &str) -> (Option<&str>, &str) {
    let Some((name, secret)) = entry.split_once(':') else {
        return (None, entry);
    };
    let is_name = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if is_name { (Some(name), secret) } else { (None, entry) }
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

/// Unix seconds as plain decimal digits (no sign, fraction or exponent).
fn parse_timestamp(value: &[u8]) -> Option<i64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// 1 to 255 visible ASCII characters, as for an idempotency key.
pub fn valid_webhook_id(id: &[u8]) -> bool {
    !id.is_empty() && id.len() <= MAX_WEBHOOK_ID_LEN && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// The `v1` digests of a space-separated `webhook-signature` list. Entries of other versions
/// are skipped; a list without any well-formed `v1` entry is malformed.
fn parse_standard_signatures(header: &[u8]) -> Result<Vec<[u8; DIGEST_LEN]>, SignatureError> {
    let mut digests = Vec::new();
    for entry in header.split(|b| *b == b' ').filter(|entry| !entry.is_empty()) {
        let Some(comma) = entry.iter().position(|b| *b == b',') else {
            continue;
        };
        let (version, encoded) = (&entry[..comma], &entry[comma + 1..]);
        if version != STANDARD_VERSION.as_bytes() || encoded.len() != 44 {
            continue;
        }
        if let Ok(bytes) = BASE64.decode(encoded)
            && let Ok(digest) = <[u8; DIGEST_LEN]>::try_from(bytes.as_slice())
        {
            digests.push(digest);
        }
    }
    if digests.is_empty() { Err(SignatureError::Malformed) } else { Ok(digests) }
}

/// The `X-Webhook-Signature` value for `body` under `secret`, as a scanner would send it.
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

/// The `webhook-signature` value for a Standard Webhooks request, or `None` when a
/// `whsec_` secret is not base64.
pub fn sign_standard(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    let key_bytes = match secret.strip_prefix(STANDARD_SECRET_PREFIX) {
        Some(encoded) => BASE64.decode(encoded).ok()?,
        None => secret.as_bytes().to_vec(),
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes);
    let mut context = hmac::Context::with_key(&key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    Some(format!("{STANDARD_VERSION},{}", BASE64.encode(context.sign().as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// Vectors signed by an independent implementation (see the file's "about").
    const VECTORS: &str = include_str!("../testdata/signatures.json");
    /// Standard Webhooks vectors from the scheme's reference library (see its "about").
    const STANDARD_VECTORS: &str = include_str!("../testdata/standard-webhooks.json");

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

    #[derive(Deserialize)]
    struct StandardVectors {
        vectors: Vec<StandardVector>,
        verify_cases: Vec<StandardCase>,
    }

    #[derive(Deserialize)]
    struct StandardVector {
        secret: String,
        webhook_id: String,
        webhook_timestamp: i64,
        body_utf8: String,
        signature: String,
    }

    #[derive(Deserialize)]
    struct StandardCase {
        secret: String,
        webhook_id: String,
        webhook_timestamp: i64,
        body_utf8: String,
        header: String,
        valid: bool,
        why: String,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(VECTORS).expect("vector file parses")
    }

    fn standard_vectors() -> StandardVectors {
        serde_json::from_str(STANDARD_VECTORS).expect("standard vector file parses")
    }

    fn verifier(secret: &str) -> Verifier {
        Verifier::new(&[Secret::new(secret)], 300).expect("usable secret")
    }

    fn standard<'a>(id: &'a str, timestamp: &'a str, signature: &'a str) -> StandardHeaders<'a> {
        StandardHeaders {
            id: id.as_bytes(),
            timestamp: timestamp.as_bytes(),
            signature: signature.as_bytes(),
        }
    }

    #[test]
    fn every_vector_verifies_and_signs_identically() {
        let all = vectors();
        assert!(!all.vectors.is_empty());
        for v in &all.vectors {
            let body = v.body_utf8.as_bytes();
            assert_eq!(body.len(), v.body_len, "body length of {:?}", v.body_utf8);
            assert_eq!(verifier(&v.secret).verify(v.signature.as_bytes(), body), Ok("secret-1"));
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
    fn any_configured_secret_is_accepted_and_named() {
        let first = &vectors().vectors[0];
        let entries = [
            Secret::new("old-secret"),
            Secret::new(format!("acme-scanners:{}", first.secret)),
            Secret::new("other:x"),
        ];
        let rotating = Verifier::new(&entries, 300).expect("usable secrets");
        let header = first.signature.as_bytes();
        assert_eq!(rotating.verify(header, first.body_utf8.as_bytes()), Ok("acme-scanners"));
        assert_eq!(rotating.names().collect::<Vec<_>>(), ["secret-1", "acme-scanners", "other"]);
        let old = sign("old-secret", b"{}");
        assert_eq!(rotating.verify(old.as_bytes(), b"{}"), Ok("secret-1"));
    }

    #[test]
    fn unusable_secret_lists_are_refused() {
        let check = |entries: &[&str]| {
            let secrets: Vec<_> = entries.iter().map(|e| Secret::new(*e)).collect();
            Verifier::new(&secrets, 300).err()
        };
        assert_eq!(check(&[]), Some(SecretsError::Empty));
        assert_eq!(check(&["acme:"]), Some(SecretsError::EmptySecret("acme".into())));
        assert_eq!(check(&["a:x", "a:y"]), Some(SecretsError::DuplicateName("a".into())));
        assert_eq!(check(&["v:whsec_***"]), Some(SecretsError::BadStandardSecret("v".into())));
        // A colon after something that is not a name belongs to the secret.
        assert_eq!(check(&["not a name:secret", "s3cr3t"]), None);
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
            first.signature.replacen("sha256=", "sha1=", 1),
            first.signature[..first.signature.len() - 1].to_owned(),
            format!("{}0", first.signature),
            format!("{}00", first.signature),
            first.signature.replacen('a', "g", 1),
        ] {
            assert_eq!(check.verify(header.as_bytes(), body), Err(SignatureError::Malformed));
        }
    }

    #[test]
    fn every_standard_vector_verifies_and_signs_identically() {
        let all = standard_vectors();
        assert!(!all.vectors.is_empty());
        for v in &all.vectors {
            let ts = v.webhook_timestamp.to_string();
            let headers = standard(&v.webhook_id, &ts, &v.signature);
            let check = verifier(&v.secret);
            let outcome =
                check.verify_standard(headers, v.body_utf8.as_bytes(), v.webhook_timestamp);
            assert_eq!(outcome, Ok("secret-1"), "{}", v.webhook_id);
            let signed = sign_standard(
                &v.secret,
                &v.webhook_id,
                v.webhook_timestamp,
                v.body_utf8.as_bytes(),
            );
            assert_eq!(signed.as_deref(), Some(v.signature.as_str()));
        }
    }

    #[test]
    fn standard_cases_match_the_reference_verdict() {
        for case in &standard_vectors().verify_cases {
            let ts = case.webhook_timestamp.to_string();
            let headers = standard(&case.webhook_id, &ts, &case.header);
            let check = verifier(&case.secret);
            let outcome =
                check.verify_standard(headers, case.body_utf8.as_bytes(), case.webhook_timestamp);
            assert_eq!(
                outcome.is_ok(),
                case.valid,
                "{}: {:?} -> {outcome:?}",
                case.why,
                case.header
            );
        }
    }

    #[test]
    fn standard_timestamps_outside_the_tolerance_are_stale() {
        let v = &standard_vectors().vectors[0];
        let ts = v.webhook_timestamp.to_string();
        let headers = standard(&v.webhook_id, &ts, &v.signature);
        let body = v.body_utf8.as_bytes();
        let check = verifier(&v.secret);
        let at = v.webhook_timestamp;
        assert_eq!(check.verify_standard(headers, body, at + 300), Ok("secret-1"));
        assert_eq!(check.verify_standard(headers, body, at - 300), Ok("secret-1"));
        assert_eq!(check.verify_standard(headers, body, at + 301), Err(SignatureError::Stale));
        assert_eq!(check.verify_standard(headers, body, at - 301), Err(SignatureError::Stale));
    }

    #[test]
    fn malformed_standard_headers_are_refused() {
        let v = &standard_vectors().vectors[0];
        let ts = v.webhook_timestamp.to_string();
        let body = v.body_utf8.as_bytes();
        let check = verifier(&v.secret);
        let at = v.webhook_timestamp;
        let float_ts = format!("{ts}.0");
        let long_id = "m".repeat(MAX_WEBHOOK_ID_LEN + 1);
        for headers in [
            standard(&v.webhook_id, "", &v.signature),
            standard(&v.webhook_id, "-1", &v.signature),
            standard(&v.webhook_id, &float_ts, &v.signature),
            standard(&v.webhook_id, "99999999999999999999", &v.signature),
            standard("", &ts, &v.signature),
            standard("msg 1", &ts, &v.signature),
            standard(&long_id, &ts, &v.signature),
            standard(&v.webhook_id, &ts, "v1"),
            standard(&v.webhook_id, &ts, ""),
            standard(&v.webhook_id, &ts, "v2,abc"),
        ] {
            assert_eq!(check.verify_standard(headers, body, at), Err(SignatureError::Malformed));
        }
    }
}
