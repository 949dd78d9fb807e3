//! `geoedge dns`: the authoritative server.
//!
//! ```text
//! listen (UDP loops, TCP) ──▶ query (fast table, or hickory + steering) ──▶ answer bytes
//!                                   │ reads
//!                                   ▼
//!                 state: zones, steered answers, region table, GeoIP, health
//!                                   ▲ swaps whole
//! server: reloads, health transitions, probes ◀── admin: signed reports, overrides
//! ```
//!
//! - [`listen`] owns the sockets: UDP loops on threads of their own (batched with
//!   `recvmmsg`/`sendmmsg` on Linux) and TCP under a connection cap.
//! - [`query`] turns one query into its answer: the precomputed fast table for the common
//!   cases, the hickory path for the rest, GeoIP/ECS steering, RRL.
//! - [`state`] is everything a query reads, built once per config and swapped whole;
//!   [`zone`] and [`steered`] are its static and steered data.
//! - [`dnssec`] signs the answers of zones that have keys, online, with compact denial.
//! - [`server`] holds the shared parts and changes them (reload, health, probes);
//!   [`run`] binds and serves; [`admin`] is the control listener's DNS routes.

pub mod admin;
pub mod dnssec;
pub mod explain;
pub mod listen;
pub mod query;
pub mod run;
pub mod server;
pub mod shed;
pub mod state;
pub mod steered;
pub mod zone;

pub use query::handler::GeoDnsHandler;
pub use state::DnsState;
