//! Stage 3, admission: which route a request takes (by Host, then path prefix) and
//! whether it may pass: URL limits, address lists, request rules, rate limits and
//! authentication, in that order (`guard`). It hands `http` a route index or a refusal.

pub mod auth;
pub mod guard;
pub mod ratelimit;
pub mod router;
pub mod rules;
