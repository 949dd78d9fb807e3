//! Access-log lines of the stream listeners: one per connection (for the FTP gateway, one
//! per session and one per transfer), in the access log's format: `key=value` pairs after
//! the time in the combined format, an object in the JSON one. Passwords never reach
//! these lines: the FTP session logs the user name only.

use crate::config::proxy::AccessLogFormat;
use crate::process::logfile::{clf_time, json_str, rfc3339};

/// One field's value: numbers stay numbers in JSON.
pub enum Value<'a> {
    Text(&'a str),
    Number(u64),
    Millis(f64),
}

/// A line for event `kind` (`stream`, `ftp_session`, `ftp_transfer`) at `unix_ms`.
pub fn line(
    kind: &str,
    unix_ms: u64,
    fields: &[(&str, Value<'_>)],
    format: AccessLogFormat,
) -> String {
    match format {
        AccessLogFormat::Combined => {
            let mut out = format!("[{}] {kind}", clf_time(unix_ms));
            for (key, value) in fields {
                out.push(' ');
                out.push_str(key);
                out.push('=');
                match value {
                    Value::Text("") => out.push_str("\"\""),
                    Value::Text(t)
                        if t.chars().any(|c| {
                            c.is_whitespace() || c == '"' || c == '\\' || c.is_control()
                        }) =>
                    {
                        // Escaped so that a file name with spaces cannot forge a field.
                        out.push_str(&json_str(t))
                    }
                    Value::Text(t) => out.push_str(t),
                    Value::Number(n) => out.push_str(&n.to_string()),
                    Value::Millis(ms) => out.push_str(&format!("{ms:.1}")),
                }
            }
            out
        }
        AccessLogFormat::Json => {
            let mut out = format!(
                "{{\"time\":\"{}\",\"event\":{}",
                rfc3339(unix_ms),
                json_str(kind)
            );
            for (key, value) in fields {
                out.push(',');
                out.push_str(&json_str(key));
                out.push(':');
                match value {
                    Value::Text(t) => out.push_str(&json_str(t)),
                    Value::Number(n) => out.push_str(&n.to_string()),
                    Value::Millis(ms) => out.push_str(&format!("{ms:.1}")),
                }
            }
            out.push('}');
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_pairs_or_an_object_and_odd_text_is_quoted() {
        let fields = [
            ("client", Value::Text("192.0.2.7:40000")),
            ("file", Value::Text("a b\"c")),
            ("bytes_out", Value::Number(52_428_800)),
            ("duration_ms", Value::Millis(12.34)),
        ];
        let combined = line("ftp_transfer", 0, &fields, AccessLogFormat::Combined);
        assert_eq!(
            combined,
            "[01/Jan/1970:00:00:00 +0000] ftp_transfer client=192.0.2.7:40000 file=\"a b\\\"c\" bytes_out=52428800 duration_ms=12.3"
        );
        let json = line("ftp_transfer", 0, &fields, AccessLogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["event"], "ftp_transfer");
        assert_eq!(v["file"], "a b\"c");
        assert_eq!(v["bytes_out"], 52_428_800);
    }
}
