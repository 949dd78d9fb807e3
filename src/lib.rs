//! geoedge: a global server load balancing edge. The map of the code is docs/ARCHITECTURE.md.

pub mod acme;
pub mod cache;
pub mod config;
pub mod control;
pub mod demo;
pub mod dns;
pub mod geo;
pub mod health;
pub mod metrics;
pub mod origin;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod steer;
#[cfg(test)]
pub mod test_support;
