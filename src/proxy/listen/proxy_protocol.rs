//! The PROXY protocol header (v1 text or v2 binary, HAProxy's spec) a TCP load balancer
//! in front of the edge writes first on each connection, carrying the client's address:
//! nginx's `listen ... proxy_protocol`, HAProxy's `accept-proxy`. Where the header ends
//! is decided here; what it says is parsed by the `ppp` crate.

use std::net::{IpAddr, SocketAddr};

use tokio::io::AsyncReadExt;

use crate::proxy::listen::lazy_socket::LazySocket;

/// A socket whose waiting bytes can be looked at before they are read: the header is
/// read exactly, never a byte of what follows it.
pub trait Peek: tokio::io::AsyncRead + Unpin {
    fn peek_waiting<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a;
}

impl Peek for LazySocket {
    fn peek_waiting<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a {
        self.peek(buf)
    }
}

impl Peek for tokio::net::TcpStream {
    fn peek_waiting<'a>(
        &'a mut self,
        buf: &'a mut [u8],
    ) -> impl std::future::Future<Output = std::io::Result<usize>> + Send + 'a {
        self.peek(buf)
    }
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header the spec allows, CRLF included.
const V1_MAX: usize = 107;
/// The v2 header's fixed part: signature, version and command, family, length.
const V2_FIXED: usize = 16;
/// v2 addresses and TLVs beyond this are refused: balancers send tens of bytes.
const V2_MAX: usize = 4096;

#[derive(Debug, PartialEq, Eq)]
pub enum Extent {
    /// The header is this many bytes.
    Complete(usize),
    /// Everything here belongs to a header that is not all here yet.
    Incomplete,
    Invalid(&'static str),
}

/// Where the header at the start of `bytes` ends.
pub fn extent(bytes: &[u8]) -> Extent {
    let seen = bytes.len().min(V2_SIGNATURE.len());
    if bytes[..seen] == V2_SIGNATURE[..seen] {
        if bytes.len() < V2_FIXED {
            return Extent::Incomplete;
        }
        let len = V2_FIXED + usize::from(u16::from_be_bytes([bytes[14], bytes[15]]));
        return if len > V2_MAX {
            Extent::Invalid("PROXY v2 header too long")
        } else if bytes.len() < len {
            Extent::Incomplete
        } else {
            Extent::Complete(len)
        };
    }
    let seen = bytes.len().min(V1_PREFIX.len());
    if bytes[..seen] != V1_PREFIX[..seen] {
        return Extent::Invalid("no PROXY protocol header");
    }
    match bytes.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end + 2 <= V1_MAX => Extent::Complete(end + 2),
        Some(_) => Extent::Invalid("PROXY v1 header too long"),
        None if bytes.len() >= V1_MAX => Extent::Invalid("PROXY v1 header too long"),
        None => Extent::Incomplete,
    }
}

/// The client address a whole header gives; `None` when it gives none (v2 LOCAL, a
/// balancer's own health check; v1 UNKNOWN; a family other than TCP over IP), and the
/// connection's own address stands.
pub fn source(header: &[u8]) -> Result<Option<SocketAddr>, String> {
    match ppp::HeaderResult::parse(header) {
        ppp::HeaderResult::V1(Ok(h)) => Ok(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        }),
        ppp::HeaderResult::V2(Ok(h)) => {
            if h.command == ppp::v2::Command::Local {
                return Ok(None);
            }
            Ok(match h.addresses {
                ppp::v2::Addresses::IPv4(a) => {
                    Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
                }
                ppp::v2::Addresses::IPv6(a) => {
                    Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
                }
                ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
            })
        }
        ppp::HeaderResult::V1(Err(e)) => Err(format!("bad PROXY v1 header: {e}")),
        ppp::HeaderResult::V2(Err(e)) => Err(format!("bad PROXY v2 header: {e}")),
    }
}

/// Reads the header at the start of `stream`, taking exactly its bytes: what follows
/// (a TLS ClientHello, an HTTP request) stays for the connection. Bytes are peeked first,
/// so nothing past the header is read; those that are all header are taken at once, so a
/// header that arrives in pieces is waited for, not spun on.
pub async fn read_header<S: Peek>(stream: &mut S) -> Result<Option<SocketAddr>, String> {
    let mut header = Vec::with_capacity(V1_MAX);
    let mut peeked = [0u8; 512];
    loop {
        let n = stream
            .peek_waiting(&mut peeked)
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
        if n == 0 {
            return Err("connection closed before its PROXY header ended".into());
        }
        let have = header.len();
        header.extend_from_slice(&peeked[..n]);
        let take = match extent(&header) {
            Extent::Complete(len) => len - have,
            Extent::Incomplete => n,
            Extent::Invalid(why) => return Err(why.into()),
        };
        header.truncate(have + take);
        stream
            .read_exact(&mut peeked[..take])
            .await
            .map_err(|e| format!("reading the PROXY header: {e}"))?;
        if let Extent::Complete(_) = extent(&header) {
            return source(&header);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | command);
        h.push(family);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    fn v2_tcp4(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut body = src.to_vec();
        body.extend_from_slice(&[10, 0, 0, 1]);
        body.extend_from_slice(&sport.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        v2(1, 0x11, &body)
    }

    #[test]
    fn a_header_ends_where_its_version_says_and_not_before() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(extent(v1), Extent::Complete(41));
        assert_eq!(extent(&v1[..20]), Extent::Incomplete);
        assert_eq!(extent(b"PRO"), Extent::Incomplete);
        let mut v2 = v2_tcp4([192, 0, 2, 7], 51000);
        let len = v2.len();
        assert_eq!(extent(&v2[..5]), Extent::Incomplete);
        assert_eq!(extent(&v2[..15]), Extent::Incomplete);
        assert_eq!(extent(&v2[..len - 1]), Extent::Incomplete);
        v2.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(extent(&v2), Extent::Complete(len));
    }

    #[test]
    fn anything_else_is_refused_at_once() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"\x16\x03\x01\x02\x00",
            b"PROXY-ish",
            b"\r\n\r\n\0\r\nQUI?",
        ] {
            assert!(matches!(extent(bad), Extent::Invalid(_)), "{bad:?}");
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(extent(&long), Extent::Invalid(_)));
        let mut huge = v2(1, 0x11, &[]);
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(extent(&huge), Extent::Invalid(_)));
    }

    #[test]
    fn the_source_address_is_the_clients() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 51000 443\r\n";
        assert_eq!(source(v1), Ok(Some("192.0.2.7:51000".parse().unwrap())));
        let v1 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        assert_eq!(source(v1), Ok(Some("[2001:db8::7]:51000".parse().unwrap())));
        assert_eq!(source(b"PROXY UNKNOWN\r\n"), Ok(None));
        assert_eq!(
            source(&v2_tcp4([198, 51, 100, 9], 40000)),
            Ok(Some("198.51.100.9:40000".parse().unwrap()))
        );
        // LOCAL: the balancer's own connection (a health check): no client address.
        assert_eq!(source(&v2(0, 0x00, &[])), Ok(None));
        assert!(source(b"PROXY TCP4 999.0.2.7 10.0.0.1 51000 443\r\n").is_err());
        assert!(source(b"PROXY TCP4 192.0.2.7 10.0.0.1 51000\r\n").is_err());
    }
}
