//! A string that must never be shown.
//!
//! `Secret` is how client secrets (and, later, tokens) travel inside the
//! daemon. Its `Debug` and `Display` print `[redacted]`, so a secret cannot
//! reach a log line or an error message by accident; the value is only
//! reachable through [`Secret::expose`], which is easy to grep for.
//!
//! Its memory is zeroed when it is dropped (`zeroize`), so a token the
//! daemon no longer holds does not linger in freed heap. Copies made on
//! the way to the wire (reqwest's form body, hyper's and tonic's buffers,
//! serde_json's output for the store) are outside its reach; the process
//! is also non-dumpable and has core dumps off, which covers those.

use std::fmt;

/// Serialises as the plain string: only the store (0600 files in a 0700
/// directory) serialises secrets.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself. Call only where it leaves for the wire or the store.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// [`Self::constant_time_eq`] between two secrets.
    pub fn same_as(&self, other: &Secret) -> bool {
        self.constant_time_eq(&other.0)
    }

    /// Compares in time independent of where the values differ.
    pub fn constant_time_eq(&self, other: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), other.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
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

#[cfg(test)]
mod tests {
    use super::Secret;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
