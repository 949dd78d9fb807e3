//! Beside the request path: the admin listener (`/healthz`, `/metrics`, purge, reload),
//! configuration reload on request or SIGHUP, signed health reports to every DNS server,
//! and the access log. None of it runs on a request's task except the access-log write.

pub mod access_log;
pub mod endpoints;
pub mod report;
