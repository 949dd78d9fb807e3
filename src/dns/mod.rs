//! `geoedge dns`: the authoritative server.

pub mod ecs;
pub mod handler;
pub mod rrl;
pub mod server;
pub mod state;
pub mod zone;

pub use handler::GeoDnsHandler;
pub use state::DnsState;
