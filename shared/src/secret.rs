//! Secrets that never print.

use std::fmt;

/// A secret string (a password or a token). `Debug` and `Display` print `[redacted]`, and it
/// has no `Serialize`, so it cannot leak into a log line, an event or an API answer by
/// accident; [`Secret::expose`] is the one door and is easy to grep for.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret in clear, for the one place that must send it (a connection, an env var).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A fresh random secret of `len` alphanumeric characters from the OS CSPRNG.
    pub fn generate(len: usize) -> Self {
        use rand::{distributions::Alphanumeric, rngs::OsRng, Rng};
        Secret(OsRng.sample_iter(&Alphanumeric).take(len).map(char::from).collect())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Secret)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn generated_secrets_are_long_random_and_alphanumeric() {
        let a = Secret::generate(32);
        let b = Secret::generate(32);
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, b);
    }
}
