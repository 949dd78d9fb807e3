//! Stage 5, origins: the upstream groups (origin state that survives reloads, balancing,
//! active checks and passive detection, idle connection pools), and one request's
//! exchange with an origin under the retry rule: over HTTP/1.1 (`origin_conn` by the wire
//! rules of `origin_wire`) or HTTP/2 (`origin_h2`), in the clear or over TLS
//! (`origin_tls`, opened by `connect`), or as a WebSocket tunnel. It hands back an
//! `Answer` whose body returns the connection to its pool when done.

pub mod balance;
pub mod checks;
pub mod connect;
pub mod exchange;
pub mod failover;
pub mod group;
pub mod meter;
pub mod origin_conn;
pub mod origin_h2;
pub mod origin_tls;
pub mod origin_wire;
mod peer_failover;
pub mod send_proxy;
pub mod tunnel;
