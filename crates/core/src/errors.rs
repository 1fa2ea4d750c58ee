//! Configuration errors, collected rather than returned one at a time.

use std::fmt;

/// One configuration problem at a path such as `routes[3].upstream`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found while compiling a configuration. Compilation goes on after an error so
/// that an operator sees all of them in one `portcullis check`.
#[derive(Debug, Default, Clone)]
pub struct ConfigErrors {
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an error. A URL quoted in `message` is shown without its password: these
    /// messages are logged and returned by the admin API.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let message = message.into();
        let message = match crate::secret::redact_urls_in(&message) {
            std::borrow::Cow::Owned(shown) => shown,
            std::borrow::Cow::Borrowed(_) => message,
        };
        self.errors.push(ConfigError {
            path: path.into(),
            message,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ConfigError> {
        self.errors.iter()
    }

    pub fn extend(&mut self, other: ConfigErrors) {
        self.errors.extend(other.errors);
    }

    pub fn into_vec(self) -> Vec<ConfigError> {
        self.errors
    }

    /// `Ok(value)` when no error was collected.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_and_formats_every_error() {
        let mut e = ConfigErrors::new();
        e.push("routes[0].upstream", "unknown upstream \"x\"");
        e.push("", "no listener");
        assert_eq!(e.len(), 2);
        assert_eq!(
            e.to_string(),
            "routes[0].upstream: unknown upstream \"x\"\nno listener"
        );
        assert!(e.into_result(()).is_err());
        assert!(ConfigErrors::new().into_result(1).is_ok());
    }
}
