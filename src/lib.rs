//! geoedge: a global server load balancing edge. See DESIGN.md for the architecture.

pub mod config;
pub mod control;
pub mod dns;
pub mod geo;
pub mod health;
pub mod metrics;
pub mod origin;
pub mod proxy;
pub mod steer;
