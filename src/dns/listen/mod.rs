//! The DNS server's sockets: UDP receive/answer loops on threads of their own, outside
//! tokio (the answer is computed on the loop's thread, no task hand-off), and DNS over
//! TCP on the runtime. Both hand raw packets to `query` and write what it returns.

#[cfg(target_os = "linux")]
pub mod mmsg;
pub mod tcp;
pub mod udp;
