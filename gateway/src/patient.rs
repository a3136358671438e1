//! The `patient_id` path segment.

/// A patient id as it may appear in the path: 1 to 64 characters of `A-Za-z0-9._-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientId(String);

pub const MAX_LEN: usize = 64;

impl PatientId {
    /// `None` for a segment that cannot be an id; such a patient has no case.
    pub fn parse(segment: &str) -> Option<Self> {
        let well_formed = !segment.is_empty()
            && segment.len() <= MAX_LEN
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        well_formed.then(|| Self(segment.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
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
    fn refuses_everything_else() {
        for bad in ["", &"9".repeat(65), "a b", "a/b", "%41", "é", "a+b", "..;"] {
            assert_eq!(PatientId::parse(bad), None, "{bad:?}");
        }
    }
}
