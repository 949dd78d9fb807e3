//! Stage 2, requests: read them off a connection, by the HTTP/1 fast path
//! (`fast_h1`, for the bodiless and small requests that are most of the traffic) or by
//! hyper (everything else, and HTTP/2), refuse what cannot be read as a request, and walk
//! each request through `route`, `cached` and `upstream` (`forward`). Header hygiene on
//! the way through (hop-by-hop, forwarding headers, masking the origin) lives here too.

pub mod fast_h1;
pub mod forward;
pub mod headers;
pub mod refused;
pub mod request_head;
