//! Request rules, a small web-application firewall declared in config: each rule matches
//! on method, path (prefix, exact, regex), a header's presence or value, or the query
//! string, and denies (with a status), allows (skipping later rules) or tags. Rules are
//! checked in order; the first deny or allow decides.

use http::{HeaderMap, Method, Uri};
use regex::Regex;

use crate::config::proxy::{RuleAction, RuleConfig};

pub struct Rule {
    pub name: String,
    pub action: RuleAction,
    pub status: u16,
    methods: Vec<String>,
    path_prefix: Option<String>,
    path_exact: Option<String>,
    path_regex: Option<Regex>,
    header: Option<String>,
    header_regex: Option<Regex>,
    query_regex: Option<Regex>,
}

/// What the rules decided, with the index of every rule that matched (for counters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index of the rule that denied the request, if one did.
    pub denied_by: Option<usize>,
    pub matched: Vec<usize>,
}

pub fn compile(rules: &[RuleConfig]) -> Vec<Rule> {
    rules
        .iter()
        .map(|r| Rule {
            name: r.name.clone(),
            action: r.action,
            status: r.status,
            methods: r.methods.clone(),
            path_prefix: r.path_prefix.clone(),
            path_exact: r.path_exact.clone(),
            // Validated when the config was loaded; a pattern that still fails matches nothing.
            path_regex: r.path_regex.as_deref().and_then(|p| Regex::new(p).ok()),
            header: r.header.clone(),
            header_regex: r.header_regex.as_deref().and_then(|p| Regex::new(p).ok()),
            query_regex: r.query_regex.as_deref().and_then(|p| Regex::new(p).ok()),
        })
        .collect()
}

impl Rule {
    /// All of a rule's conditions must hold; a rule with none matches everything.
    fn matches(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method.as_str()) {
            return false;
        }
        let path = uri.path();
        if self
            .path_prefix
            .as_deref()
            .is_some_and(|p| !path.starts_with(p))
        {
            return false;
        }
        if self.path_exact.as_deref().is_some_and(|p| path != p) {
            return false;
        }
        if self.path_regex.as_ref().is_some_and(|r| !r.is_match(path)) {
            return false;
        }
        if let Some(name) = &self.header {
            let values: Vec<&str> = headers
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            match &self.header_regex {
                None if values.is_empty() => return false,
                Some(r) if !values.iter().any(|v| r.is_match(v)) => return false,
                _ => {}
            }
        }
        if let Some(r) = &self.query_regex {
            if !r.is_match(uri.query().unwrap_or("")) {
                return false;
            }
        }
        true
    }
}

pub fn evaluate(rules: &[Rule], method: &Method, uri: &Uri, headers: &HeaderMap) -> Decision {
    let mut matched = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        if !rule.matches(method, uri, headers) {
            continue;
        }
        matched.push(i);
        match rule.action {
            RuleAction::Deny => {
                return Decision {
                    denied_by: Some(i),
                    matched,
                }
            }
            RuleAction::Allow => break,
            RuleAction::Tag => {}
        }
    }
    Decision {
        denied_by: None,
        matched,
    }
}

/// Too long a request target (414) or too many query parameters (400).
pub fn url_limits(uri: &Uri, max_url: usize, max_params: usize) -> Result<(), u16> {
    let target = uri.path_and_query().map(|p| p.as_str().len()).unwrap_or(0);
    if target > max_url {
        return Err(414);
    }
    let params = uri
        .query()
        .map(|q| q.split('&').filter(|p| !p.is_empty()).count())
        .unwrap_or(0);
    if params > max_params {
        return Err(400);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, action: RuleAction, f: impl FnOnce(&mut RuleConfig)) -> RuleConfig {
        let mut r = RuleConfig {
            name: name.into(),
            action,
            status: 403,
            methods: vec![],
            path_prefix: None,
            path_exact: None,
            path_regex: None,
            header: None,
            header_regex: None,
            query_regex: None,
        };
        f(&mut r);
        r
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn each_kind_of_match_blocks_what_it_should_and_nothing_else() {
        let rules = compile(&[
            rule("no-trace", RuleAction::Deny, |r| {
                r.methods = vec!["TRACE".into()]
            }),
            rule("admin", RuleAction::Deny, |r| {
                r.path_prefix = Some("/admin".into())
            }),
            rule("exact", RuleAction::Deny, |r| {
                r.path_exact = Some("/wp-login.php".into())
            }),
            rule("dotfiles", RuleAction::Deny, |r| {
                r.path_regex = Some(r"/\.[a-z]".into())
            }),
            rule("scanner", RuleAction::Deny, |r| {
                r.header = Some("user-agent".into());
                r.header_regex = Some("(?i)sqlmap|nikto".into());
            }),
            rule("debug-header", RuleAction::Deny, |r| {
                r.header = Some("x-debug".into())
            }),
            rule("sqli", RuleAction::Deny, |r| {
                r.query_regex = Some("(?i)union.+select".into())
            }),
        ]);
        let denied = |p: http::request::Parts| {
            evaluate(&rules, &p.method, &p.uri, &p.headers)
                .denied_by
                .map(|i| rules[i].name.clone())
        };
        assert_eq!(denied(req("TRACE", "/", &[])).as_deref(), Some("no-trace"));
        assert_eq!(
            denied(req("GET", "/admin/x", &[])).as_deref(),
            Some("admin")
        );
        assert_eq!(
            denied(req("GET", "/wp-login.php", &[])).as_deref(),
            Some("exact")
        );
        assert_eq!(denied(req("GET", "/wp-login.php.bak", &[])), None);
        assert_eq!(
            denied(req("GET", "/.git/config", &[])).as_deref(),
            Some("dotfiles")
        );
        assert_eq!(
            denied(req("GET", "/", &[("user-agent", "sqlmap/1.0")])).as_deref(),
            Some("scanner")
        );
        assert_eq!(denied(req("GET", "/", &[("user-agent", "curl/8")])), None);
        assert_eq!(
            denied(req("GET", "/", &[("x-debug", "1")])).as_deref(),
            Some("debug-header")
        );
        assert_eq!(
            denied(req("GET", "/q?id=1%20UNION%20ALL%20SELECT", &[])).as_deref(),
            Some("sqli")
        );
        assert_eq!(denied(req("GET", "/q?id=1", &[])), None);
        assert_eq!(
            denied(req("POST", "/administrators-guide", &[])).as_deref(),
            Some("admin"),
            "prefix is a prefix"
        );
        assert_eq!(denied(req("GET", "/public/page", &[])), None);
    }

    #[test]
    fn allow_stops_evaluation_and_tags_only_count() {
        let rules = compile(&[
            rule("tag-api", RuleAction::Tag, |r| {
                r.path_prefix = Some("/api".into())
            }),
            rule("health-ok", RuleAction::Allow, |r| {
                r.path_exact = Some("/api/health".into())
            }),
            rule("api-closed", RuleAction::Deny, |r| {
                r.path_prefix = Some("/api".into())
            }),
        ]);
        let p = req("GET", "/api/health", &[]);
        let d = evaluate(&rules, &p.method, &p.uri, &p.headers);
        assert_eq!(
            d,
            Decision {
                denied_by: None,
                matched: vec![0, 1]
            }
        );
        let p = req("GET", "/api/users", &[]);
        let d = evaluate(&rules, &p.method, &p.uri, &p.headers);
        assert_eq!(d.denied_by, Some(2));
        assert_eq!(d.matched, vec![0, 2]);
    }

    #[test]
    fn url_and_query_limits() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(url_limits(&uri("/short?a=1&b=2"), 100, 10), Ok(()));
        let long = format!("/{}", "x".repeat(200));
        assert_eq!(url_limits(&uri(&long), 100, 10), Err(414));
        let many: String = (0..20)
            .map(|i| format!("p{i}=1"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(url_limits(&uri(&format!("/?{many}")), 1000, 10), Err(400));
    }
}
