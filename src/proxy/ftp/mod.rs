//! The FTP-aware gateway (`mode = "ftp"` streams): RFC 959 control connections relayed
//! command by command, explicit (RFC 4217) and implicit FTPS towards clients, explicit
//! FTPS towards origins, and passive data connections proxied through ports of the
//! gateway's own, so that no client ever sees or reaches an internal address.

pub mod check;
pub mod command;
pub mod control;
pub mod data;
pub mod limits;
pub mod origin;
pub mod reply;
pub mod session;
