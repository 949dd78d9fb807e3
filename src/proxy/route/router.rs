//! Which route a request takes: by Host (exact names, then `*.suffix` wildcards), then by
//! the longest matching path prefix.

use crate::config::proxy::RouteConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteMatch {
    Route(usize),
    /// No route serves this host: 421 Misdirected Request (RFC 9110 §15.5.20).
    UnknownHost,
    /// The host is ours but no route covers the path: 404.
    NoPath,
}

#[derive(Debug, Clone)]
pub struct Router {
    routes: Vec<(Vec<HostPattern>, String)>,
}

#[derive(Debug, Clone)]
enum HostPattern {
    Exact(String),
    /// `*.example.test` stored as `.example.test`.
    Suffix(String),
    Any,
}

impl HostPattern {
    fn parse(text: &str) -> Self {
        if text == "*" {
            HostPattern::Any
        } else if let Some(rest) = text.strip_prefix('*') {
            HostPattern::Suffix(rest.to_ascii_lowercase())
        } else {
            HostPattern::Exact(text.to_ascii_lowercase())
        }
    }

    /// 3 for exact, 2 for a suffix, 1 for any: the most specific host rule wins.
    fn matches(&self, host: &str) -> u8 {
        match self {
            HostPattern::Exact(h) if h.eq_ignore_ascii_case(host) => 3,
            HostPattern::Suffix(s)
                if host.len() > s.len()
                    && host.is_char_boundary(host.len() - s.len())
                    && host[host.len() - s.len()..].eq_ignore_ascii_case(s) =>
            {
                2
            }
            HostPattern::Any => 1,
            _ => 0,
        }
    }
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Self {
        Self {
            routes: routes
                .iter()
                .map(|r| {
                    (
                        r.hosts.iter().map(|h| HostPattern::parse(h)).collect(),
                        r.path_prefix.clone(),
                    )
                })
                .collect(),
        }
    }

    pub fn route(&self, host: Option<&str>, path: &str) -> RouteMatch {
        let host = host.unwrap_or("").trim_end_matches('.');
        let mut best: Option<(u8, usize, usize)> = None; // (host specificity, prefix len, index)
        let mut host_known = false;
        for (i, (patterns, prefix)) in self.routes.iter().enumerate() {
            let spec = patterns.iter().map(|p| p.matches(host)).max().unwrap_or(0);
            if spec == 0 {
                continue;
            }
            host_known = true;
            if !path.starts_with(prefix.as_str()) {
                continue;
            }
            let key = (spec, prefix.len(), i);
            if best.is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
                best = Some(key);
            }
        }
        match best {
            Some((_, _, i)) => RouteMatch::Route(i),
            None if host_known => RouteMatch::NoPath,
            None => RouteMatch::UnknownHost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(hosts: &[&str], prefix: &str) -> RouteConfig {
        RouteConfig {
            hosts: hosts.iter().map(|s| s.to_string()).collect(),
            path_prefix: prefix.into(),
            upstream: "u".into(),
            redirect_https: false,
            cache: false,
            compress: false,
            rate: None,
            allow: vec![],
            deny: vec![],
            auth: None,
            hsts: None,
            require_client_cert: false,
        }
    }

    fn router() -> Router {
        Router::new(&[
            route(&["www.example.test"], "/"),
            route(&["www.example.test"], "/api/"),
            route(&["*.example.test"], "/"),
            route(&["static.example.test"], "/assets/"),
        ])
    }

    #[test]
    fn longest_prefix_wins_within_a_host() {
        let r = router();
        assert_eq!(
            r.route(Some("www.example.test"), "/api/v1"),
            RouteMatch::Route(1)
        );
        assert_eq!(
            r.route(Some("WWW.Example.Test"), "/index.html"),
            RouteMatch::Route(0)
        );
    }

    #[test]
    fn exact_host_beats_wildcard() {
        let r = router();
        assert_eq!(
            r.route(Some("static.example.test"), "/assets/a.css"),
            RouteMatch::Route(3)
        );
        assert_eq!(
            r.route(Some("static.example.test"), "/other"),
            RouteMatch::Route(2)
        );
        assert_eq!(
            r.route(Some("img.example.test"), "/x"),
            RouteMatch::Route(2)
        );
    }

    #[test]
    fn unknown_host_and_unknown_path_differ() {
        let r = Router::new(&[route(&["www.example.test"], "/app/")]);
        assert_eq!(
            r.route(Some("other.test"), "/app/"),
            RouteMatch::UnknownHost
        );
        assert_eq!(r.route(None, "/app/"), RouteMatch::UnknownHost);
        assert_eq!(r.route(Some("www.example.test"), "/"), RouteMatch::NoPath);
        // The wildcard needs at least one label in front.
        let r = Router::new(&[route(&["*.example.test"], "/")]);
        assert_eq!(r.route(Some("example.test"), "/"), RouteMatch::UnknownHost);
    }

    #[test]
    fn trailing_dot_hosts_match() {
        let r = router();
        assert_eq!(
            r.route(Some("www.example.test."), "/"),
            RouteMatch::Route(0)
        );
    }
}
