//! The PROXY protocol header written *to* an origin ahead of a client's bytes
//! (`send_proxy`), so an origin behind the edge still sees who connected: HAProxy's
//! `send-proxy` / `send-proxy-v2`, nginx's `proxy_protocol on` in `stream`. The `ppp`
//! crate writes both versions.

use std::net::SocketAddr;

use ppp::v2::{Builder, Command, Protocol, Version};

use crate::config::proxy::ProxyVersion;

/// The header saying that `client` connected to `local`. Mixed families (an IPv4 client
/// on an IPv6 listener) are written as the IPv6-mapped form, so the client is still named.
pub fn header(version: ProxyVersion, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = same_family(client, local);
    match version {
        ProxyVersion::V1 => ppp::v1::Addresses::from((client, local))
            .to_string()
            .into_bytes(),
        ProxyVersion::V2 => {
            Builder::with_addresses(
                Version::Two | Command::Proxy,
                Protocol::Stream,
                (client, local),
            )
            .build()
            // Writing into a Vec cannot fail; LOCAL (no address) is the spec's fallback.
            .unwrap_or_else(|_| b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec())
        }
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |s: SocketAddr| match s {
        SocketAddr::V4(v4) => SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port()),
        v6 => v6,
    };
    if a.is_ipv4() == b.is_ipv4() {
        (a, b)
    } else {
        (v6(a), v6(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::listen::proxy_protocol::{extent, source, Extent};

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn version_one_is_the_text_line() {
        let h = header(
            ProxyVersion::V1,
            addr("192.0.2.7:40000"),
            addr("127.0.0.1:2222"),
        );
        assert_eq!(h, b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 2222\r\n");
    }

    #[test]
    fn both_versions_read_back_as_the_client_by_our_own_reader() {
        for version in [ProxyVersion::V1, ProxyVersion::V2] {
            for (client, local) in [
                ("192.0.2.7:40000", "127.0.0.1:2222"),
                ("[2001:db8::7]:40000", "[::1]:2222"),
                ("192.0.2.7:40000", "[::1]:2222"),
            ] {
                let h = header(version, addr(client), addr(local));
                assert_eq!(
                    extent(&h),
                    Extent::Complete(h.len()),
                    "{version:?} {client}"
                );
                let read = source(&h).unwrap().unwrap();
                assert_eq!(read.port(), 40000);
                let ip = match read.ip() {
                    std::net::IpAddr::V6(v6) => v6.to_canonical(),
                    v4 => v4,
                };
                assert_eq!(ip, addr(client).ip(), "{version:?}");
            }
        }
    }
}
