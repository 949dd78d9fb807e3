//! `geoedge dns`: the authoritative server.

pub mod decisions;
pub mod ecs;
pub mod fast;
pub mod handler;
#[cfg(target_os = "linux")]
pub mod mmsg;
pub mod rrl;
pub mod server;
pub mod state;
pub mod udp;
pub mod zone;

pub use handler::GeoDnsHandler;
pub use state::DnsState;
