//! Config files: TOML schemas read with serde, then validated into the plain structs the
//! engines use. Every error names the file, the key and (where known) the line.

pub mod dns;
mod dnssec;
mod edns;
mod failover;
mod forwarding;
mod limits;
mod listener_tls;
mod names;
mod protect;
pub mod proxy;
mod regions;
mod reports;
mod steering;
mod streams;
mod upstreams;

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use dns::DnsConfig;
pub use proxy::ProxyConfig;

/// Which face of geoedge a config file is for, told by its top-level tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    Dns,
    Proxy,
}

pub fn detect_kind(path: &Path) -> Result<ConfigKind, ConfigError> {
    let source = Source::read(path)?;
    let table: toml::Table = source.parse()?;
    if table.contains_key("node") {
        Ok(ConfigKind::Proxy)
    } else if table.contains_key("geoip") || table.contains_key("zones") {
        Ok(ConfigKind::Dns)
    } else {
        Err(ConfigError {
            file: path.to_path_buf(),
            key: None,
            line: None,
            message: "not a geoedge config: expected a [node] table (proxy) or [geoip] and [[zones]] (dns)".into(),
        })
    }
}

/// A config file that could not be used, with enough context to fix it.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// Dotted path of the offending key, e.g. `regions[1].nodes[0].ipv4`.
    pub key: Option<String>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// The text of a config file, kept so that validation errors can point at a line.
pub struct Source {
    pub path: PathBuf,
    text: String,
}

impl Source {
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: None,
            line: None,
            message: format!("cannot read config file: {e}"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            text,
        })
    }

    pub fn from_text(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            text: text.into(),
        }
    }

    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        toml::from_str(&self.text).map_err(|e| {
            let line = e.span().map(|s| self.line_of(&s));
            ConfigError {
                file: self.path.clone(),
                key: None,
                line,
                message: e.message().trim().to_string(),
            }
        })
    }

    /// 1-based line number of a byte span's start.
    pub fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    pub fn error(
        &self,
        key: impl Into<String>,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            key: Some(key.into()),
            line: span.map(|s| self.line_of(&s)),
            message: message.into(),
        }
    }

    /// Resolves a path written in the config relative to the config file's folder, so a
    /// config works the same from whatever directory the binary is started in.
    /// A file the config names, resolved against the config's folder; an error naming
    /// `key` and the line when it does not exist.
    pub fn existing_file(
        &self,
        key: &str,
        path: &toml::Spanned<PathBuf>,
    ) -> Result<PathBuf, ConfigError> {
        let resolved = self.resolve(path.get_ref());
        if resolved.is_file() {
            Ok(resolved)
        } else {
            Err(self.error(
                key,
                Some(path.span()),
                format!("{} does not exist", resolved.display()),
            ))
        }
    }

    pub fn resolve(&self, written: &Path) -> PathBuf {
        if written.is_absolute() {
            return written.to_path_buf();
        }
        match self.path.parent() {
            Some(dir) => dir.join(written),
            None => written.to_path_buf(),
        }
    }
}

/// Parses "10s", "250ms", "2m", "14d" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (use e.g. 250ms, 10s, 2m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86_400.0,
        other => return Err(format!("unknown duration unit `{other}` in `{text}`")),
    };
    if !seconds.is_finite() || !(0.0..=86_400.0 * 365.0).contains(&seconds) {
        return Err(format!("duration `{text}` is out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

/// A duration in config, written as a string like "250ms".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub std::time::Duration);

impl<'de> serde::Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(ConfigDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn line_of_counts_from_one() {
        let src = Source::from_text("x.toml", "a = 1\nb = 2\nc = 3\n");
        assert_eq!(src.line_of(&(0..1)), 1);
        assert_eq!(src.line_of(&(12..13)), 3);
    }
}
