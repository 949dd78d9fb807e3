//! Stage 1, connections: accept under the connection caps, read a PROXY protocol header
//! where the listener expects one, terminate TLS with the certificate the SNI names, and
//! keep the socket out of epoll until it would block; get certificates by ACME. What it hands to `http` is a byte
//! stream with its idle clock and write holding; what it owns is the connection's life,
//! from accept to graceful drain.

pub mod acme;
pub mod client_io;
pub mod corked;
pub mod lazy_socket;
pub mod proxy_protocol;
pub mod server;
pub mod tls;
pub mod woken;
