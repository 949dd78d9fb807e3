//! The process's own log: structured lines to stderr through `tracing`, filtered by
//! RUST_LOG or the config's level.

/// Structured logs to stderr: RUST_LOG if set, else the config's level, else info.
pub fn init(config_level: Option<&str>) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let filter = [rust_log.as_deref(), config_level, Some("info")]
        .into_iter()
        .flatten()
        .filter(|level| !level.trim().is_empty())
        .find_map(|level| tracing_subscriber::EnvFilter::try_new(log_directives(level)).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// rustls warns on every connection about what the client sent (an IP address as SNI,
/// a warning alert, an unexpected message): left at warn, any client would write our log,
/// a line per handshake. The proxy counts handshakes by result itself
/// (`geoedge_proxy_tls_handshakes_total`), so rustls is held at error unless the filter
/// names it (`RUST_LOG=info,rustls=debug`).
pub fn log_directives(filter: &str) -> String {
    if names_rustls(filter) {
        filter.to_string()
    } else {
        format!("{filter},rustls=error")
    }
}

/// Whether a directive of `filter` targets rustls or one of its modules; `tokio_rustls`
/// is another crate and leaves the hold in place.
fn names_rustls(filter: &str) -> bool {
    filter.split(',').any(|directive| {
        let target = directive.split(['=', '[']).next().unwrap_or("").trim();
        target == "rustls" || target.starts_with("rustls::")
    })
}

#[cfg(test)]
mod tests {
    use super::log_directives;

    #[test]
    fn rustls_is_held_at_error_unless_the_filter_names_it() {
        assert_eq!(log_directives("info"), "info,rustls=error");
        assert_eq!(
            log_directives("debug,geoedge=trace"),
            "debug,geoedge=trace,rustls=error"
        );
        assert_eq!(log_directives("info,rustls=debug"), "info,rustls=debug");
        assert_eq!(
            log_directives("info,rustls::msgs=warn"),
            "info,rustls::msgs=warn"
        );
        assert_eq!(
            log_directives("info,tokio_rustls=debug"),
            "info,tokio_rustls=debug,rustls=error"
        );
        for level in ["info", "warn,hyper=debug", "trace"] {
            assert!(tracing_subscriber::EnvFilter::try_new(log_directives(level)).is_ok());
        }
    }
}
