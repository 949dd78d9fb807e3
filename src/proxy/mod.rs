//! `geoedge proxy`: the regional reverse proxy, one folder per stage of a request's path.
//!
//! ```text
//! listen ──▶ http ──▶ route ──▶ cached ──▶ upstream ──▶ origin
//!   ▲                                        │
//!   └──────────── answer / body ◀────────────┘        admin: reload, reports, access log
//! ```
//!
//! - [`listen`] accepts connections and owns them: sockets, TLS, PROXY protocol, idle
//!   time; it hands a byte stream to `http`.
//! - [`http`] reads requests off that stream (the HTTP/1 fast path or hyper), refuses
//!   what does not parse, and walks each request through the stages below.
//! - [`route`] says which route a request takes and whether it may pass.
//! - [`cached`] answers from the cache, or fetches through `upstream` and stores.
//! - [`upstream`] picks an origin, speaks to it and applies the retry rule.
//! - [`admin`] is beside the path: the admin listener, reload, health reports to the DNS
//!   servers and the access log.
//! - [`stream`] is the other path, for bytes rather than requests: `[[streams]]`
//!   listeners pass TCP or TLS to an upstream's origins; [`ftp`] is the FTP gateway
//!   behind the `ftp` streams.
//!
//! The files at this level are what every stage passes along: the state a request reads
//! ([`state`]), bodies, errors, answers and an origin's header lines.

pub mod admin;
pub mod answer;
pub mod body;
pub mod cached;
pub mod error;
pub mod ftp;
pub mod header_lines;
pub mod http;
pub mod listen;
pub mod maybe_tls;
pub mod route;
pub mod state;
pub mod stream;
#[cfg(test)]
mod test_bodies;
pub mod upstream;

pub use listen::server::ProxyServer;
pub use state::{ProxyState, RouteAuth, RouteRuntime, Shared};
