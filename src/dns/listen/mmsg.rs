//! Batched datagram I/O on Linux: `recvmmsg(2)` takes up to `BATCH` queries in one system
//! call and `sendmmsg(2)` sends their answers in one more, as gdnsd and Knot do. Under
//! load, the per-call cost (entry, file lookup, socket lock) is paid once per batch
//! instead of twice per query; when queries trickle in, a batch is just one datagram.
//!
//! The kernel structures hold raw pointers, so they are built on the stack for each call
//! and never outlive it; what persists between calls is plain data (buffers, addresses).

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::{SockAddr, SockAddrStorage};

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// The largest query read whole. DNS over UDP has no use for more (RFC 6891 payloads top
/// out well below it); a longer datagram is flagged truncated and dropped by the caller.
pub const DATAGRAM: usize = 4096;

/// What one received datagram was.
#[derive(Debug, Clone, Copy, Default)]
pub struct Received {
    pub len: usize,
    pub from: Option<SocketAddr>,
    /// The datagram was longer than `DATAGRAM`; `len` bytes of it were kept.
    pub truncated: bool,
}

/// Receive buffers for one loop.
pub struct RecvBatch {
    buffers: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    received: [Received; BATCH],
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl RecvBatch {
    pub fn new() -> Self {
        Self {
            buffers: vec![0; BATCH * DATAGRAM],
            // SAFETY: all-zero bytes are a valid sockaddr_storage (a plain C struct).
            names: vec![unsafe { mem::zeroed() }; BATCH],
            received: [Received::default(); BATCH],
            count: 0,
        }
    }

    /// Receives up to `BATCH` datagrams: what is queued, after waiting for the first one
    /// if `wait` (on a blocking socket, up to its receive timeout). `WouldBlock` when
    /// nothing came.
    pub fn recv(&mut self, fd: RawFd, wait: bool) -> io::Result<usize> {
        let flags = if wait {
            libc::MSG_WAITFORONE
        } else {
            libc::MSG_DONTWAIT
        };
        let base = self.buffers.as_mut_ptr();
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            // SAFETY: i < BATCH, so the offset stays inside `buffers` (BATCH * DATAGRAM).
            iov_base: unsafe { base.add(i * DATAGRAM) }.cast(),
            iov_len: DATAGRAM,
        });
        // SAFETY: mmsghdr is a plain C struct; zero is its "no name, no control" state.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for ((header, iovec), name) in headers
            .iter_mut()
            .zip(iovecs.iter_mut())
            .zip(self.names.iter_mut())
        {
            header.msg_hdr.msg_name = (name as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as _;
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every header points at memory owned by `self` or this frame, alive for
        // the call; the kernel writes at most the lengths given.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                headers.as_mut_ptr(),
                BATCH as _,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, header) in headers.iter().enumerate().take(n) {
            self.received[i] = Received {
                len: (header.msg_len as usize).min(DATAGRAM),
                from: socket_addr(&self.names[i], header.msg_hdr.msg_namelen),
                truncated: header.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            };
        }
        self.count = n;
        Ok(n)
    }

    /// Datagram `i` of the last batch: its bytes and what the kernel said of it.
    pub fn datagram(&self, i: usize) -> Option<(&[u8], Received)> {
        if i >= self.count {
            return None;
        }
        let r = self.received[i];
        let start = i * DATAGRAM;
        Some((&self.buffers[start..start + r.len], r))
    }
}

fn socket_addr(name: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let mut storage = SockAddrStorage::zeroed();
    // SAFETY: sockaddr_storage is one of the platform's sockaddr types, as view_as asks.
    unsafe { *storage.view_as::<libc::sockaddr_storage>() = *name };
    // SAFETY: the kernel filled `len` bytes of a sockaddr of the socket's family.
    let addr = unsafe { SockAddr::new(storage, len) };
    addr.as_socket()
}

/// Answers waiting to be sent, each with its peer.
pub struct SendBatch {
    answers: Vec<Vec<u8>>,
    peers: Vec<SockAddr>,
    len: usize,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self::new()
    }
}

impl SendBatch {
    pub fn new() -> Self {
        Self {
            answers: (0..BATCH).map(|_| Vec::with_capacity(1_232)).collect(),
            peers: Vec::with_capacity(BATCH),
            len: 0,
        }
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.peers.clear();
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The buffer for the next answer, empty; it is queued only by `push`. `None` when
    /// the batch is full.
    pub fn next_buffer(&mut self) -> Option<&mut Vec<u8>> {
        let buffer = self.answers.get_mut(self.len)?;
        buffer.clear();
        Some(buffer)
    }

    /// Queues what was written to `next_buffer()` for `peer`.
    pub fn push(&mut self, peer: SocketAddr) {
        if self.len < self.answers.len() {
            self.peers.push(SockAddr::from(peer));
            self.len += 1;
        }
    }

    /// Sends the queued answers from `start` on; returns how many went. With `wait`, a
    /// full socket buffer makes it wait (on a blocking socket) rather than fail. An error
    /// concerns answer `start` (the kernel reports a failure only when nothing was sent).
    pub fn send(&self, fd: RawFd, start: usize, wait: bool) -> io::Result<usize> {
        let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
        let count = self.len.saturating_sub(start);
        if count == 0 {
            return Ok(0);
        }
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| {
            let answer = self.answers.get(start + i).filter(|_| i < count);
            libc::iovec {
                iov_base: answer.map_or(std::ptr::null_mut(), |a| a.as_ptr().cast_mut().cast()),
                iov_len: answer.map_or(0, Vec::len),
            }
        });
        // SAFETY: mmsghdr is a plain C struct; zero is its "no name, no control" state.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { mem::zeroed() };
        for ((header, iovec), peer) in headers
            .iter_mut()
            .zip(iovecs.iter_mut())
            .zip(&self.peers[start..start + count])
        {
            header.msg_hdr.msg_name = peer.as_ptr().cast_mut().cast();
            header.msg_hdr.msg_namelen = peer.len();
            header.msg_hdr.msg_iov = iovec;
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `count` headers point at answers and addresses owned by `self`
        // and iovecs in this frame, all alive for the call; the kernel only reads them.
        let n = unsafe { libc::sendmmsg(fd, headers.as_mut_ptr(), count as _, flags) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    #[test]
    fn receives_and_answers_a_batch() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let to = server.local_addr().unwrap();
        for i in 0..5u8 {
            client.send_to(&[i; 10], to).unwrap();
        }
        client.send_to(&vec![7u8; DATAGRAM + 100], to).unwrap();

        let mut rx = RecvBatch::new();
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while got.len() < 6 && Instant::now() < deadline {
            match rx.recv(server.as_raw_fd(), false) {
                Ok(n) => got.extend(
                    (0..n).filter_map(|i| rx.datagram(i).map(|(bytes, r)| (bytes.to_vec(), r))),
                ),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("recvmmsg: {e}"),
            }
        }
        assert_eq!(got.len(), 6);
        for (i, (bytes, r)) in got.iter().take(5).enumerate() {
            assert_eq!(bytes, &vec![i as u8; 10]);
            assert_eq!(r.from, Some(client.local_addr().unwrap()));
            assert!(!r.truncated);
        }
        assert!(
            got[5].1.truncated,
            "a datagram longer than DATAGRAM is flagged"
        );
        assert_eq!(got[5].0.len(), DATAGRAM);
        assert!(rx.datagram(6).is_none());

        let mut tx = SendBatch::new();
        for (i, (_, r)) in got.iter().take(5).enumerate() {
            let out = tx.next_buffer().unwrap();
            out.clear();
            out.extend_from_slice(&[100 + i as u8; 3]);
            tx.push(r.from.unwrap());
        }
        assert_eq!(tx.len(), 5);
        let mut sent = 0;
        while sent < tx.len() {
            sent += tx.send(server.as_raw_fd(), sent, true).unwrap();
        }
        let mut buf = [0u8; 16];
        for i in 0..5u8 {
            let (n, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], &[100 + i; 3]);
            assert_eq!(from, to);
        }
        tx.clear();
        assert!(tx.is_empty());
        assert_eq!(tx.send(server.as_raw_fd(), 0, false).unwrap(), 0);
    }

    #[test]
    fn an_empty_socket_would_block() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut rx = RecvBatch::new();
        let err = rx.recv(server.as_raw_fd(), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Waiting on a blocking socket ends at its receive timeout.
        server
            .set_read_timeout(Some(std::time::Duration::from_millis(20)))
            .unwrap();
        let err = rx.recv(server.as_raw_fd(), true).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn ipv6_peers_come_back_whole() {
        // Some sandboxes have no IPv6 loopback; there is nothing to test there.
        let Ok(server) = UdpSocket::bind("[::1]:0") else {
            eprintln!("no IPv6 loopback here; skipped");
            return;
        };
        let client = UdpSocket::bind("[::1]:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client
            .send_to(b"query", server.local_addr().unwrap())
            .unwrap();
        let mut rx = RecvBatch::new();
        assert_eq!(rx.recv(server.as_raw_fd(), true).unwrap(), 1);
        let (bytes, r) = rx.datagram(0).unwrap();
        assert_eq!(bytes, b"query");
        assert_eq!(r.from, Some(client.local_addr().unwrap()));
        let mut tx = SendBatch::new();
        tx.next_buffer().unwrap().extend_from_slice(b"answer");
        tx.push(client.local_addr().unwrap());
        assert_eq!(tx.send(server.as_raw_fd(), 0, true).unwrap(), 1);
        let mut buf = [0u8; 16];
        let (n, _) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"answer");
    }
}
