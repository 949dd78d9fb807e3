//! The one parseable line printed per bound socket (`listening for UDP on 127.0.0.1:40213`),
//! which tests and scripts read to learn ports chosen by the kernel. A closed stdout is
//! ignored: a server must not die because nobody reads its announcements.

use std::io::Write;
use std::net::SocketAddr;

pub fn announce(kind: &str, addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening for {kind} on {addr}");
    let _ = out.flush();
}
