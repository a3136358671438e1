//! The `patient_id` path segment.
//!
//! Percent-encoded octets are decoded first (RFC 3986 treats `%36%30` and `60` as the same
//! text), then the result must be 1 to 64 characters of `A-Za-z0-9._-`. Anything else, an
//! encoded `/` included, cannot be a patient id, and such a patient has no case.

/// A patient id: 1 to 64 characters of `A-Za-z0-9._-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientId(String);

pub const MAX_LEN: usize = 64;

impl PatientId {
    /// `None` for a segment that cannot be an id.
    pub fn parse(segment: &str) -> Option<Self> {
        let decoded = percent_decode(segment.as_bytes())?;
        let well_formed = !decoded.is_empty()
            && decoded.len() <= MAX_LEN
            && decoded.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        // Only ASCII is left, so the bytes are a string.
        well_formed.then(|| Self(decoded.into_iter().map(char::from).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The octets of `%XX` escapes and of everything else as is; `None` for a broken escape.
fn percent_decode(segment: &[u8]) -> Option<Vec<u8>> {
    let mut decoded = Vec::with_capacity(segment.len());
    let mut rest = segment;
    while let Some((&byte, tail)) = rest.split_first() {
        if byte == b'%' {
            let [high, low, ..] = tail else {
                return None;
            };
            let digit = |d: u8| char::from(d).to_digit(16);
            let value = digit(*high)? * 16 + digit(*low)?;
            decoded.push(u8::try_from(value).ok()?);
            rest = &tail[2..];
        } else {
            decoded.push(byte);
            rest = tail;
        }
    }
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_alphabet() {
        for ok in ["605914", "a", "P-1_2.x", &"9".repeat(64)] {
            assert_eq!(PatientId::parse(ok).map(|p| p.0), Some(ok.to_owned()));
        }
    }

    #[test]
    fn decodes_percent_escapes_before_checking() {
        assert_eq!(PatientId::parse("%36%30%35914").map(|p| p.0), Some("605914".to_owned()));
        assert_eq!(PatientId::parse("p%2d1").map(|p| p.0), Some("p-1".to_owned()));
        // 64 characters once decoded, more than 64 as sent.
        let long = "%41".repeat(64);
        assert_eq!(PatientId::parse(&long).map(|p| p.0.len()), Some(64));
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            &"9".repeat(65),
            "a b",
            "a/b",
            "a%2Fb",
            "%41%",
            "%4",
            "%zz",
            "%C3%A9",
            "é",
            "a+b",
            "..;",
            "%00",
            &"%41".repeat(65),
        ] {
            assert_eq!(PatientId::parse(bad), None, "{bad:?}");
        }
    }
}
