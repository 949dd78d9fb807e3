//! A minimal DNS client for tests, on hickory-proto's wire format.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::str::FromStr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};

pub struct Ask {
    pub name: String,
    pub qtype: RecordType,
    /// (address, source prefix) of an ECS option.
    pub ecs: Option<(String, u8)>,
    pub edns: bool,
    pub payload: u16,
    /// The DO bit (RFC 3225): ask for DNSSEC records.
    pub dnssec: bool,
    /// RD, for questions to a resolver.
    pub recursion: bool,
}

impl Ask {
    pub fn new(name: &str, qtype: RecordType) -> Self {
        Self {
            name: name.to_string(),
            qtype,
            ecs: None,
            edns: true,
            payload: 1232,
            dnssec: false,
            recursion: false,
        }
    }

    pub fn dnssec(mut self) -> Self {
        self.dnssec = true;
        self
    }

    pub fn recursive(mut self) -> Self {
        self.recursion = true;
        self
    }

    pub fn payload(mut self, payload: u16) -> Self {
        self.payload = payload;
        self
    }

    pub fn ecs(mut self, addr: &str, prefix: u8) -> Self {
        self.ecs = Some((addr.to_string(), prefix));
        self
    }

    pub fn no_edns(mut self) -> Self {
        self.edns = false;
        self
    }

    pub fn message(&self) -> Message {
        let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_str(&self.name).expect("name"),
            self.qtype,
        ));
        m.metadata.recursion_desired = self.recursion;
        if self.edns || self.ecs.is_some() || self.dnssec {
            let mut edns = Edns::new();
            edns.set_max_payload(self.payload);
            edns.set_dnssec_ok(self.dnssec);
            if let Some((addr, prefix)) = &self.ecs {
                let ip: IpAddr = addr.parse().expect("ecs addr");
                edns.options_mut()
                    .insert(EdnsOption::Subnet(ClientSubnet::new(ip, *prefix, 0)));
            }
            m.set_edns(edns);
        }
        m
    }
}

pub fn udp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    sock.send_to(bytes, server).expect("send");
    let mut buf = vec![0u8; 65535];
    match sock.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

pub fn tcp_raw(server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&server, Duration::from_secs(3)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let len = u16::try_from(bytes.len()).expect("fits").to_be_bytes();
    s.write_all(&len).ok()?;
    s.write_all(bytes).ok()?;
    let mut lenbuf = [0u8; 2];
    s.read_exact(&mut lenbuf).ok()?;
    let mut buf = vec![0u8; u16::from_be_bytes(lenbuf) as usize];
    s.read_exact(&mut buf).ok()?;
    Some(buf)
}

pub fn udp(server: SocketAddr, ask: &Ask) -> Message {
    let bytes = ask.message().to_vec().expect("encode");
    let raw = udp_raw(server, &bytes).expect("an answer over UDP");
    Message::from_vec(&raw).expect("decode answer")
}

pub fn tcp(server: SocketAddr, ask: &Ask) -> Message {
    let bytes = ask.message().to_vec().expect("encode");
    let raw = tcp_raw(server, &bytes).expect("an answer over TCP");
    Message::from_vec(&raw).expect("decode answer")
}

/// The A/AAAA addresses of the answer section, in order.
pub fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// (source prefix, scope prefix) of the answer's ECS option.
pub fn ecs_scope(m: &Message) -> Option<(u8, u8)> {
    let edns = m.edns.as_ref()?;
    match edns.option(hickory_proto::rr::rdata::opt::EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some((s.source_prefix(), s.scope_prefix())),
        _ => None,
    }
}
