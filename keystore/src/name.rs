//! Validated key names ("parse, don't validate").
use crate::Error;
use std::fmt;

/// A key name: 1-128 characters of `[A-Za-z0-9._-]`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyName(String);

/// The longest allowed key name, in characters.
pub const MAX_KEY_NAME: usize = 128;

impl KeyName {
    /// Parses a key name.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if s.is_empty() {
            return Err(Error::InvalidName("empty"));
        }
        if s.len() > MAX_KEY_NAME {
            return Err(Error::InvalidName("longer than 128 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(Error::InvalidName("only A-Z a-z 0-9 . _ - are allowed"));
        }
        Ok(KeyName(s.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyName({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_rejects() {
        assert!(KeyName::parse("payments.card-pan_v2").is_ok());
        assert!(KeyName::parse(&"a".repeat(128)).is_ok());
        assert!(KeyName::parse(&"a".repeat(129)).is_err());
        assert!(KeyName::parse("").is_err());
        assert!(KeyName::parse("a/b").is_err());
        assert!(KeyName::parse("a b").is_err());
        assert!(KeyName::parse("é").is_err());
    }
}
