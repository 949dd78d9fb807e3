//! What a request must pass before it is forwarded, in order: URL limits, the route's
//! address lists, the request rules, the rate limits, and authentication. Each refusal is
//! counted, so an operator can see what the edge blocks.

use std::net::IpAddr;

use http::header::AUTHORIZATION;
use http::Request;

use crate::proxy::error::ProxyError;
use crate::proxy::route::auth::Denied;
use crate::proxy::route::ratelimit::Verdict;
use crate::proxy::{ProxyState, Shared};

pub fn admit<B>(
    shared: &Shared,
    state: &ProxyState,
    route_index: usize,
    client: IpAddr,
    req: &mut Request<B>,
) -> Result<(), ProxyError> {
    let m = &shared.metrics;
    let route = &state.routes[route_index];
    let limits = &state.config.limits;
    match crate::proxy::route::rules::url_limits(
        req.uri(),
        limits.max_url_bytes,
        limits.max_query_params,
    ) {
        Err(414) => return Err(ProxyError::UriTooLong),
        Err(_) => return Err(ProxyError::TooManyParams),
        Ok(()) => {}
    }
    if (!route.allow.is_empty() && !route.allow.iter().any(|n| n.contains(&client)))
        || route.deny.iter().any(|n| n.contains(&client))
    {
        m.access_denied.inc();
        return Err(ProxyError::AddressDenied);
    }
    if !state.rules.is_empty() {
        let decision = crate::proxy::route::rules::evaluate(
            &state.rules,
            req.method(),
            req.uri(),
            req.headers(),
        );
        for i in &decision.matched {
            if let Some(c) = state.rule_counters.get(*i) {
                c.inc();
            }
        }
        if let Some(i) = decision.denied_by {
            let rule = &state.rules[i];
            return Err(ProxyError::RuleDenied {
                rule: rule.name.clone(),
                status: rule.status,
            });
        }
    }
    if let Verdict::Limited { retry_after, scope } = state.rate.check(client, route_index) {
        m.rate_limited.with_label_values(&[scope.label()]).inc();
        return Err(ProxyError::RateLimited {
            scope: scope.label(),
            retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
        });
    }
    if let Some(auth) = &route.auth {
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(why) = auth.users.check(header) {
            let reason = match why {
                Denied::Missing => "missing",
                Denied::Malformed => "malformed",
                Denied::BadCredentials => "bad_credentials",
            };
            m.auth_failures.with_label_values(&[reason]).inc();
            return Err(ProxyError::Unauthorized {
                realm: auth.realm.clone(),
            });
        }
        if !auth.forward_authorization {
            req.headers_mut().remove(AUTHORIZATION);
        }
    }
    Ok(())
}
