//! Header work on the way through, split by purpose: hop-by-hop removal, forwarding
//! headers (with the trusted-proxy rule), and masking the origin in responses.

use std::net::IpAddr;

use http::header::{
    HeaderName, HeaderValue, CONNECTION, FORWARDED, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
    VIA,
};
use http::{HeaderMap, Version};
use ipnet::IpNet;

use crate::config::proxy::{ForwardHeaders, ViaHop};
use crate::proxy::header_lines::HeaderLines;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
/// Always connection-specific, named in `Connection` or not.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRAILER,
    &TRANSFER_ENCODING,
    &UPGRADE,
];

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1),
/// including every header the `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them, and a response usually only `Connection`: one
    // pass over the names, then a removal for each one present, costs less than a
    // lookup for every name of the set.
    let mut present = 0u8;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // `Connection: keep-alive` or `close` (what most origins send) names nothing beyond
    // the fixed set, and then nothing is parsed or allocated.
    let named: Vec<HeaderName> =
        connection_named(headers.get_all(CONNECTION).iter().map(|v| v.as_bytes()))
            .filter_map(|name| HeaderName::from_bytes(name).ok())
            .collect();
    for name in named {
        headers.remove(name);
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// The header names a `Connection` header's values list, beyond `close` and `keep-alive`.
fn connection_named<'a>(
    values: impl Iterator<Item = &'a [u8]> + 'a,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    values
        .flat_map(|v| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
}

/// Whether a field name, in any case, is one of `HOP_BY_HOP`: by its length first, as
/// most names are of none of theirs.
fn is_hop_by_hop(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        2 => &[b"te"],
        7 => &[b"trailer", b"upgrade"],
        10 => &[b"connection", b"keep-alive"],
        16 => &[b"proxy-connection"],
        17 => &[b"transfer-encoding"],
        _ => return false,
    };
    candidates.iter().any(|c| name.eq_ignore_ascii_case(c))
}

/// What an origin's response loses on its way through, on its lines as received: the
/// hop-by-hop fields as `remove_hop_by_hop` takes them, and the hidden ones.
pub fn clean_origin_fields(fields: &mut HeaderLines, hidden: &[HeaderName]) {
    // The lengths of the hidden names, as a filter: most fields are not hidden, and a
    // HeaderName's text costs a lookup.
    let hidden_lengths = hidden
        .iter()
        .fold(0u64, |m, h| m | 1 << h.as_str().len().min(63));
    let is_hidden = |name: &[u8]| {
        hidden_lengths & (1 << name.len().min(63)) != 0
            && hidden
                .iter()
                .any(|h| name.eq_ignore_ascii_case(h.as_str().as_bytes()))
    };
    let mut any = false;
    // Owned, so that the lines can be edited after; only when Connection names more
    // than close or keep-alive, which is rare.
    let mut named: Vec<Vec<u8>> = Vec::new();
    for (name, value) in fields.iter() {
        if is_hop_by_hop(name) {
            any = true;
            if name.eq_ignore_ascii_case(b"connection") {
                named.extend(connection_named(std::iter::once(value)).map(<[u8]>::to_vec));
            }
        } else if is_hidden(name) {
            any = true;
        }
    }
    if !any {
        return;
    }
    fields.retain(|name| {
        !(is_hop_by_hop(name)
            || is_hidden(name)
            || named.iter().any(|n| name.eq_ignore_ascii_case(n)))
    });
}

/// The client a request is for: the peer, or, when the peer is a trusted proxy, the
/// right-most address in X-Forwarded-For that is not itself a trusted proxy (addresses
/// further left were written by parties we cannot vouch for).
pub fn effective_client(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if !is_trusted(peer, trusted) {
        return canonical(peer);
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for v in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(text) = v.to_str() else { continue };
        for part in text.split(',') {
            if let Ok(ip) = part.trim().parse::<IpAddr>() {
                chain.push(ip);
            }
        }
    }
    chain
        .into_iter()
        .rev()
        .find(|ip| !is_trusted(*ip, trusted))
        .map(canonical)
        .unwrap_or(canonical(peer))
}

pub fn is_trusted(client: IpAddr, trusted: &[IpNet]) -> bool {
    let client = canonical(client);
    trusted.iter().any(|net| net.contains(&client))
}

/// IPv4-mapped IPv6 addresses (from dual-stack sockets) compared as the IPv4 they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// What the proxy knows of the request it is forwarding.
pub struct ForwardContext<'a> {
    /// Which forwarding headers we write.
    pub set: ForwardHeaders,
    pub client: IpAddr,
    /// "http" or "https": how the request reached us.
    pub proto: &'static str,
    /// The Host (or :authority) the client asked for.
    pub host: Option<&'a str>,
    pub version: Version,
    /// Our hop in Via.
    pub via: &'a ViaHop,
}

/// Sets X-Forwarded-For/-Proto/-Host, Forwarded (RFC 7239) and Via on a request bound
/// for the origin. From a trusted proxy the incoming values are kept and extended; from
/// anyone else they are dropped, because a client can write anything there.
pub fn set_forwarding(headers: &mut HeaderMap, ctx: &ForwardContext<'_>, trusted: bool) {
    use std::fmt::Write as _;

    let set = ctx.set;
    let sent_by_client = |k: &HeaderName| {
        k == X_FORWARDED_FOR || k == X_FORWARDED_PROTO || k == X_FORWARDED_HOST || k == FORWARDED
    };
    // Clients rarely send any: one pass over the names costs less than a lookup of each.
    if !trusted && headers.keys().any(sent_by_client) {
        // A forwarding header we do not write must not reach the origin as an untrusted
        // client wrote it: the origin would take it for ours.
        for (on, name) in [
            (set.x_forwarded_for, &X_FORWARDED_FOR),
            (set.x_forwarded_proto, &X_FORWARDED_PROTO),
            (set.x_forwarded_host, &X_FORWARDED_HOST),
            (set.forwarded, &FORWARDED),
        ] {
            if !on {
                headers.remove(name);
            }
        }
    }
    if set.via {
        append_via(headers, ctx.version, ctx.via);
    }
    if !(set.x_forwarded_for || set.forwarded) {
        set_forwarded_proto_and_host(headers, ctx, trusted);
        return;
    }

    let client = canonical(ctx.client);
    // Values are written straight into the buffers that become the headers: this runs for
    // every proxied request, and formatting piecemeal cost eight allocations.
    let mut xff = String::with_capacity(48);
    let mut forwarded = String::with_capacity(96);
    if trusted {
        if let Some(prior) = joined(headers, &X_FORWARDED_FOR) {
            xff.push_str(&prior);
            xff.push_str(", ");
        }
        if let Some(prior) = joined(headers, &FORWARDED) {
            forwarded.push_str(&prior);
            forwarded.push_str(", ");
        }
    }
    let _ = write!(xff, "{client}");
    // RFC 7239 §6: IPv6 nodes are bracketed and the value quoted.
    let _ = match client {
        IpAddr::V4(v4) => write!(forwarded, "for={v4};proto={}", ctx.proto),
        IpAddr::V6(v6) => write!(forwarded, "for=\"[{v6}]\";proto={}", ctx.proto),
    };
    if let Some(host) = ctx.host {
        if host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            forwarded.push_str(";host=");
            if host.contains(':') {
                forwarded.push('"');
                forwarded.push_str(host);
                forwarded.push('"');
            } else {
                forwarded.push_str(host);
            }
        }
    }

    set_forwarded_proto_and_host(headers, ctx, trusted);
    if set.x_forwarded_for {
        insert_owned(headers, &X_FORWARDED_FOR, xff);
    }
    if set.forwarded {
        insert_owned(headers, &FORWARDED, forwarded);
    }
}

fn set_forwarded_proto_and_host(headers: &mut HeaderMap, ctx: &ForwardContext<'_>, trusted: bool) {
    if ctx.set.x_forwarded_proto && !(trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(ctx.proto),
        );
    }
    if ctx.set.x_forwarded_host && !(trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match ctx.host {
            Some(host) => insert(headers, &X_FORWARDED_HOST, host),
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// Adds our hop to Via (RFC 9110 §7.6.3), keeping earlier hops.
pub fn append_via(headers: &mut HeaderMap, version: Version, via: &ViaHop) {
    let ours = via.value(version);
    match joined(headers, &VIA) {
        Some(prior) => {
            let mut value = prior;
            value.push_str(", ");
            value.push_str(ours.to_str().unwrap_or_default());
            insert_owned(headers, &VIA, value);
        }
        None => {
            headers.insert(VIA, ours.clone());
        }
    }
}

/// The Host a request is for: the URI authority (HTTP/2 :authority, absolute-form) or the
/// Host header, lower-cased and without the port.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match uri.authority() {
        Some(a) => a.as_str(),
        None => headers.get(HOST)?.to_str().ok()?,
    };
    let raw = raw.rsplit('@').next().unwrap_or(raw);
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn insert(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), v);
    }
}

/// Like `insert`, taking the buffer over instead of copying it.
fn insert_owned(headers: &mut HeaderMap, name: &HeaderName, value: String) {
    match HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        Ok(v) => {
            headers.insert(name.clone(), v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        crate::test_support::header_map(pairs)
    }

    fn ctx(client: &str) -> ForwardContext<'static> {
        ForwardContext {
            set: ForwardHeaders::ALL,
            client: client.parse().unwrap(),
            proto: "https",
            host: Some("www.example.test"),
            version: Version::HTTP_11,
            via: Box::leak(Box::new(ViaHop::new("geoedge").unwrap())),
        }
    }

    #[test]
    fn via_hops_are_tokens_and_carry_the_version() {
        let via = ViaHop::new("edge-1.example:8080").unwrap();
        assert_eq!(via.value(Version::HTTP_2), "2 edge-1.example:8080");
        assert_eq!(via.value(Version::HTTP_10), "1.0 edge-1.example:8080");
        for bad in ["", "two words", "semi;colon", "quote\"", "new\nline"] {
            assert!(ViaHop::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("proxy-connection", "keep-alive"),
            ("accept", "*/*"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn untrusted_client_forwarding_headers_are_replaced() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.test"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        set_forwarding(&mut h, &ctx("192.0.2.7"), false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "www.example.test");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=https;host=www.example.test"
        );
        assert_eq!(h["via"], "1.1 geoedge");
    }

    #[test]
    fn headers_left_out_of_the_set_are_not_written_nor_spoofable() {
        let spoofed = [
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "http"),
            ("x-forwarded-host", "evil.test"),
            ("forwarded", "for=6.6.6.6"),
        ];
        let set = ForwardHeaders::from_names(&["X-Forwarded-For"]).unwrap();
        let mut c = ctx("192.0.2.7");
        c.set = set;
        let mut h = map(&spoofed);
        set_forwarding(&mut h, &c, false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        for gone in ["x-forwarded-proto", "x-forwarded-host", "forwarded", "via"] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }

        // None at all: what nginx and HAProxy send unless told otherwise, minus the
        // client's own claims.
        c.set = ForwardHeaders::from_names::<&str>(&[]).unwrap();
        let mut h = map(&spoofed);
        h.append("accept", HeaderValue::from_static("*/*"));
        set_forwarding(&mut h, &c, false);
        assert_eq!(h.len(), 1);

        // From a trusted proxy, headers we do not write pass as they came.
        let mut h = map(&spoofed);
        set_forwarding(&mut h, &c, true);
        assert_eq!(h.len(), 4);
        assert_eq!(ForwardHeaders::from_names(&["via", "nope"]), Err(1));
        assert_eq!(
            ForwardHeaders::from_names(&ForwardHeaders::NAMES),
            Ok(ForwardHeaders::ALL)
        );
    }

    #[test]
    fn trusted_proxy_forwarding_headers_are_extended() {
        let mut h = map(&[
            ("x-forwarded-for", "198.51.100.9"),
            ("x-forwarded-proto", "http"),
            ("forwarded", "for=198.51.100.9"),
            ("via", "1.1 lb"),
        ]);
        set_forwarding(&mut h, &ctx("10.0.0.2"), true);
        assert_eq!(h["x-forwarded-for"], "198.51.100.9, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=198.51.100.9, for=10.0.0.2"));
        assert_eq!(h["via"], "1.1 lb, 1.1 geoedge");
    }

    #[test]
    fn ipv6_clients_are_quoted_in_forwarded() {
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, &ctx("2001:db8::1"), false);
        assert!(h["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=\"[2001:db8::1]\""));
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, &ctx("::ffff:192.0.2.1"), false);
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
    }

    #[test]
    fn effective_client_walks_forwarded_for_from_the_right() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let h = map(&[("x-forwarded-for", "6.6.6.6, 198.51.100.9, 10.0.0.3")]);
        assert_eq!(
            effective_client("10.0.0.2".parse().unwrap(), &h, &trusted),
            "198.51.100.9".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            effective_client("192.0.2.1".parse().unwrap(), &h, &trusted),
            "192.0.2.1".parse::<IpAddr>().unwrap(),
            "untrusted peer: its own address"
        );
        assert_eq!(
            effective_client("10.0.0.2".parse().unwrap(), &HeaderMap::new(), &trusted),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn trust_is_by_network() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert!(is_trusted("10.1.2.3".parse().unwrap(), &trusted));
        assert!(is_trusted("::ffff:10.1.2.3".parse().unwrap(), &trusted));
        assert!(!is_trusted("192.0.2.1".parse().unwrap(), &trusted));
    }

    /// Origin fields as they came on the wire, names in the origin's own case.
    fn origin_fields(text: &str) -> HeaderLines {
        let wire = format!("HTTP/1.1 200 OK\r\n{text}\r\n");
        let (_, _, lines) =
            crate::proxy::upstream::origin_wire::parse_head(&mut wire.as_str().into())
                .unwrap()
                .unwrap();
        lines
    }

    fn names(lines: &HeaderLines) -> Vec<String> {
        lines
            .iter()
            .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
            .collect()
    }

    #[test]
    fn the_byte_test_for_hop_by_hop_names_is_the_list() {
        for h in HOP_BY_HOP {
            assert!(is_hop_by_hop(h.as_str().as_bytes()), "{h}");
            assert!(
                is_hop_by_hop(h.as_str().to_ascii_uppercase().as_bytes()),
                "{h}"
            );
        }
        for other in [
            "t",
            "tf",
            "trailers",
            "upgrader",
            "connexion",
            "content-length",
            "",
        ] {
            assert!(!is_hop_by_hop(other.as_bytes()), "{other}");
        }
    }

    #[test]
    fn origin_fields_lose_hop_by_hop_and_connection_named_ones_in_any_case() {
        let mut l = origin_fields(
            "Connection: Keep-Alive, X-Secret\r\nKeep-Alive: timeout=5\r\nx-secret: 1\r\n\
             TE: trailers\r\nUpgrade: h2c\r\nTransfer-Encoding: chunked\r\n\
             Proxy-Connection: keep-alive\r\nTrailer: x\r\nETag: \"1\"\r\nX-Secretive: 2\r\n",
        );
        clean_origin_fields(&mut l, &[]);
        assert_eq!(names(&l), ["ETag", "X-Secretive"]);
    }

    #[test]
    fn origin_identity_headers_are_hidden() {
        let mut l = origin_fields(
            "Server: Apache/2.4\r\nETag: \"1\"\r\nX-Powered-By: PHP\r\nserver: again\r\n",
        );
        let hidden = [
            HeaderName::from_static("server"),
            HeaderName::from_static("x-powered-by"),
        ];
        clean_origin_fields(&mut l, &hidden);
        assert_eq!(names(&l), ["ETag"]);
        // Nothing hidden, nothing hop-by-hop: everything stays, in order.
        let mut l = origin_fields("Server: o\r\nETag: \"1\"\r\n");
        clean_origin_fields(&mut l, &[]);
        assert_eq!(names(&l), ["Server", "ETag"]);
    }

    #[test]
    fn host_comes_without_port_and_lowercase_is_callers_job() {
        let uri: http::Uri = "/x".parse().unwrap();
        let h = map(&[("host", "www.example.test:8443")]);
        assert_eq!(request_host(&uri, &h), Some("www.example.test"));
        let h = map(&[("host", "[::1]:8080")]);
        assert_eq!(request_host(&uri, &h), Some("::1"));
        let abs: http::Uri = "https://api.example.test/x".parse().unwrap();
        assert_eq!(
            request_host(&abs, &HeaderMap::new()),
            Some("api.example.test")
        );
    }
}
