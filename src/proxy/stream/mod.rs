//! Stream listeners (`[[streams]]`): TCP pass-through, TLS termination, routing by SNI
//! without terminating, and the door to the FTP gateway, each in front of an upstream
//! group with the same balancing and health as HTTP.

pub mod listen;
pub mod origin;
pub mod pipe;
pub mod session_log;
pub mod sni;
