//! FTP replies as the gateway reads them from an origin and writes them to a client:
//! where a (possibly multi-line) reply ends, the ports in passive replies, and the
//! rewrites that keep the origin hidden: passive replies name the gateway, the origin's
//! address never appears in any text, and FEAT lists what the gateway (not the origin)
//! offers for security.

use std::net::{IpAddr, Ipv4Addr};

/// A whole reply: its code and its lines (CRLF removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<Vec<u8>>,
}

impl Reply {
    pub fn new(code: u16, text: &str) -> Self {
        Self {
            code,
            lines: vec![format!("{code} {text}").into_bytes()],
        }
    }

    /// 1xx: more replies follow for the same command.
    pub fn is_preliminary(&self) -> bool {
        (100..200).contains(&self.code)
    }

    /// The reply as it goes on the wire, CRLF after every line.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for line in &self.lines {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// The text of the first line after the code.
    pub fn text(&self) -> String {
        let first = self.lines.first().map(Vec::as_slice).unwrap_or_default();
        String::from_utf8_lossy(first.get(4..).unwrap_or_default()).into_owned()
    }
}

/// Collects reply lines until a reply is whole (RFC 959 §4.2: `ddd-` opens a multi-line
/// reply that the first line starting `ddd ` with the same code closes).
#[derive(Default)]
pub struct Assembler {
    open: Option<Reply>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct BadReply(pub String);

impl Assembler {
    pub fn feed(&mut self, line: &[u8]) -> Result<Option<Reply>, BadReply> {
        let code = reply_code(line);
        match &mut self.open {
            Some(open) => {
                open.lines.push(line.to_vec());
                let closes = code == Some(open.code) && line.get(3).is_none_or(|&b| b == b' ');
                Ok(if closes { self.open.take() } else { None })
            }
            None => {
                let Some(code) = code else {
                    return Err(BadReply(String::from_utf8_lossy(line).into_owned()));
                };
                let reply = Reply {
                    code,
                    lines: vec![line.to_vec()],
                };
                if line.get(3) == Some(&b'-') {
                    self.open = Some(reply);
                    Ok(None)
                } else {
                    Ok(Some(reply))
                }
            }
        }
    }
}

fn reply_code(line: &[u8]) -> Option<u16> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'1'..=b'5').contains(&digits[0]) {
        return None;
    }
    if line.get(3).is_some_and(|&b| b != b' ' && b != b'-') {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The port of a `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2)` reply. The address is
/// read but not returned: the gateway connects only to the origin it already talks to,
/// whatever a reply names (no FTP bounce, RFC 2577).
pub fn pasv_port(reply: &Reply) -> Option<u16> {
    if reply.code != 227 {
        return None;
    }
    let text = reply.text();
    // Servers differ on the parentheses (RFC 1123 §4.1.2.6): take the six numbers.
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let numbers: Vec<u16> = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(6)
        .map(|s| s.parse::<u16>().ok().filter(|&n| n <= 255))
        .collect::<Option<_>>()?;
    if numbers.len() != 6 {
        return None;
    }
    let port = numbers[4] * 256 + numbers[5];
    (port != 0).then_some(port)
}

/// The port of a `229 Entering Extended Passive Mode (|||port|)` reply (RFC 2428).
pub fn epsv_port(reply: &Reply) -> Option<u16> {
    if reply.code != 229 {
        return None;
    }
    let text = reply.text();
    let open = text.find('(')?;
    let inner = &text[open + 1..text[open..].find(')')? + open];
    let delim = inner.chars().next()?;
    let parts: Vec<&str> = inner.split(delim).collect();
    // (<d><d><d>port<d>): five pieces, the fourth the port.
    if parts.len() != 5 {
        return None;
    }
    parts[3].parse().ok().filter(|&p| p != 0)
}

pub fn pasv_reply(addr: Ipv4Addr, port: u16) -> Reply {
    let [a, b, c, d] = addr.octets();
    Reply::new(
        227,
        &format!(
            "Entering Passive Mode ({a},{b},{c},{d},{},{}).",
            port >> 8,
            port & 0xff
        ),
    )
}

pub fn epsv_reply(port: u16) -> Reply {
    Reply::new(229, &format!("Entering Extended Passive Mode (|||{port}|)"))
}

/// The reply with every mention of `origin` (dotted, and in the comma form of PASV
/// replies) replaced by `gateway`.
pub fn scrub(reply: &Reply, origin: IpAddr, gateway: IpAddr) -> Reply {
    let mut forms = vec![(origin.to_string(), gateway.to_string())];
    if let (IpAddr::V4(o), IpAddr::V4(g)) = (origin, gateway) {
        let comma = |a: Ipv4Addr| a.octets().map(|o| o.to_string()).join(",");
        forms.push((comma(o), comma(g)));
    }
    Reply {
        code: reply.code,
        lines: reply
            .lines
            .iter()
            .map(|line| {
                let mut line = line.clone();
                for (from, to) in &forms {
                    line = replace_all(&line, from.as_bytes(), to.as_bytes());
                }
                line
            })
            .collect(),
    }
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        let bounded_before = i == 0 || !is_addr_char(haystack[i - 1]);
        let after = i + needle.len();
        if bounded_before
            && haystack[i..].starts_with(needle)
            && haystack.get(after).is_none_or(|&b| !is_addr_char(b))
        {
            out.extend_from_slice(with);
            i = after;
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

/// Characters that continue an address: `127.0.0.2` must not match inside `127.0.0.21`.
fn is_addr_char(b: u8) -> bool {
    b.is_ascii_hexdigit() || b == b'.' || b == b':'
}

/// The FEAT reply the client sees: the origin's features, less the security and active-
/// mode ones (the gateway terminates security itself and refuses active mode), plus
/// `AUTH TLS`, `PBSZ` and `PROT` where this listener offers TLS, and `EPSV`.
pub fn feat(reply: &Reply, offers_tls: bool) -> Reply {
    if reply.code != 211 || reply.lines.len() < 2 {
        let mut lines = vec![b"211-Features:".to_vec()];
        add_ours(&mut lines, offers_tls, &[]);
        lines.push(b"211 End".to_vec());
        return Reply { code: 211, lines };
    }
    let last = reply.lines.len() - 1;
    let mut kept: Vec<Vec<u8>> = Vec::new();
    for line in &reply.lines[1..last] {
        let name = String::from_utf8_lossy(line).trim().to_ascii_uppercase();
        let word = name.split_whitespace().next().unwrap_or("");
        if matches!(
            word,
            "AUTH" | "PBSZ" | "PROT" | "CCC" | "EPRT" | "LPRT" | "SSCN" | "CPSV"
        ) {
            continue;
        }
        kept.push(line.clone());
    }
    let mut lines = vec![reply.lines[0].clone()];
    let have: Vec<String> = kept
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim().to_ascii_uppercase())
        .collect();
    lines.extend(kept);
    add_ours(&mut lines, offers_tls, &have);
    lines.push(reply.lines[last].clone());
    Reply { code: 211, lines }
}

fn add_ours(lines: &mut Vec<Vec<u8>>, offers_tls: bool, have: &[String]) {
    let mut ours = Vec::new();
    if offers_tls {
        ours.extend(["AUTH TLS", "PBSZ", "PROT"]);
    }
    ours.extend(["EPSV", "PASV"]);
    for f in ours {
        if !have.iter().any(|h| h == f) {
            lines.push(format!(" {f}").into_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(lines: &[&str]) -> Reply {
        let mut a = Assembler::default();
        let mut done = None;
        for l in lines {
            assert!(done.is_none(), "a reply ended early at {l}");
            done = a.feed(l.as_bytes()).unwrap();
        }
        done.expect("the reply ended")
    }

    #[test]
    fn single_and_multi_line_replies_are_assembled() {
        let r = whole(&["220 ready"]);
        assert_eq!((r.code, r.lines.len()), (220, 1));
        let r = whole(&[
            "211-Features:",
            " EPSV",
            "211-not the end",
            " UTF8",
            "211 End",
        ]);
        assert_eq!((r.code, r.lines.len()), (211, 5));
        assert_eq!(whole(&["200"]).code, 200);
        let mut a = Assembler::default();
        assert!(a.feed(b"hello").is_err());
        assert!(a.feed(b"6xx odd").is_err());
        assert!(a.feed(b"2000 five digits").is_err());
    }

    #[test]
    fn passive_replies_give_their_port_and_never_an_address_to_use() {
        let r = Reply::new(227, "Entering Passive Mode (192,0,2,1,117,49).");
        assert_eq!(pasv_port(&r), Some(117 * 256 + 49));
        let bare = Reply::new(227, "=192,0,2,1,4,1");
        assert_eq!(pasv_port(&bare), Some(1025));
        assert_eq!(
            pasv_port(&Reply::new(227, "Entering Passive Mode (1,2,3,4,5)")),
            None
        );
        assert_eq!(pasv_port(&Reply::new(227, "(1,2,3,4,300,1)")), None);
        assert_eq!(pasv_port(&Reply::new(500, "(1,2,3,4,5,6)")), None);
        assert_eq!(
            epsv_port(&Reply::new(
                229,
                "Entering Extended Passive Mode (|||30001|)"
            )),
            Some(30001)
        );
        assert_eq!(epsv_port(&Reply::new(229, "ok (!!!2121!)")), Some(2121));
        assert_eq!(epsv_port(&Reply::new(229, "(|||x|)")), None);
        assert_eq!(epsv_port(&Reply::new(229, "no parens")), None);
    }

    #[test]
    fn our_passive_replies() {
        assert_eq!(
            pasv_reply(Ipv4Addr::new(127, 0, 0, 1), 30001).to_wire(),
            b"227 Entering Passive Mode (127,0,0,1,117,49).\r\n"
        );
        assert_eq!(epsv_port(&epsv_reply(30001)), Some(30001));
    }

    #[test]
    fn the_origin_address_is_scrubbed_in_both_forms_and_only_whole() {
        let origin: IpAddr = "10.1.2.3".parse().unwrap();
        let gateway: IpAddr = "192.0.2.9".parse().unwrap();
        let r = whole(&[
            "211-Connected to 10.1.2.3",
            "  data 10,1,2,3 and 10.1.2.33",
            "211 End",
        ]);
        let s = scrub(&r, origin, gateway);
        let text = String::from_utf8(s.to_wire()).unwrap();
        assert!(text.contains("Connected to 192.0.2.9"), "{text}");
        assert!(text.contains("data 192,0,2,9 and 10.1.2.33"), "{text}");
    }

    #[test]
    fn feat_lists_our_security_not_the_origins() {
        let r = whole(&[
            "211-Features:",
            " AUTH SSL",
            " AUTH TLS",
            " EPRT",
            " EPSV",
            " MDTM",
            " PBSZ",
            " PROT",
            " SIZE",
            "211 End",
        ]);
        let with_tls = String::from_utf8(feat(&r, true).to_wire()).unwrap();
        assert_eq!(
            with_tls,
            "211-Features:\r\n EPSV\r\n MDTM\r\n SIZE\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n PASV\r\n211 End\r\n"
        );
        let plain = String::from_utf8(feat(&r, false).to_wire()).unwrap();
        assert!(
            !plain.contains("AUTH") && !plain.contains("PROT") && plain.contains("SIZE"),
            "{plain}"
        );
        // An origin without FEAT still gets ours.
        let none = String::from_utf8(feat(&Reply::new(500, "unknown"), true).to_wire()).unwrap();
        assert!(
            none.starts_with("211-") && none.contains(" AUTH TLS") && none.ends_with("211 End\r\n")
        );
    }
}
