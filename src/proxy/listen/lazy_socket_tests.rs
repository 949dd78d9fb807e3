//! Tests of `lazy_socket.rs`: when a socket joins the event loop, the system calls it
//! saves, and the segments its writes make.

use super::*;
use crate::test_support::CountingWaker;
use std::sync::Arc;
use std::task::Waker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn pair() -> (LazySocket, tokio::net::TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = Acceptor::new(listener).unwrap();
    let addr = acceptor.local_addr().unwrap();
    let client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (server, peer) = acceptor.accept().await.unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    (server, client)
}

fn counting_cx() -> (Arc<CountingWaker>, Waker) {
    let counter = Arc::new(CountingWaker::default());
    let waker = Waker::from(counter.clone());
    (counter, waker)
}

#[tokio::test]
async fn an_exchange_that_never_blocks_never_registers() {
    // Whether the request has crossed loopback before the first read is up to the
    // kernel, so count: over twenty connections some must go without the reactor.
    let mut direct = 0;
    for _ in 0..20 {
        let (mut server, mut client) = pair().await;
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        server.shutdown().await.unwrap();
        if !server.is_registered() {
            direct += 1;
        }
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"pong");
    }
    assert!(direct > 0, "every exchange went through the reactor");
}

#[tokio::test]
async fn a_socket_with_nothing_to_read_yields_once_then_registers() {
    let (mut server, _client) = pair().await;
    let (counter, waker) = counting_cx();
    let mut cx = Context::from_waker(&waker);
    let mut space = [0u8; 16];
    let mut buf = ReadBuf::new(&mut space);
    assert!(Pin::new(&mut server)
        .poll_read(&mut cx, &mut buf)
        .is_pending());
    assert!(!server.is_registered(), "first: come back once more");
    assert_eq!(counter.count(), 1, "and the task is due again");
    assert!(Pin::new(&mut server)
        .poll_read(&mut cx, &mut buf)
        .is_pending());
    assert!(server.is_registered(), "second: wait on the reactor");
}

#[tokio::test]
async fn after_a_short_read_the_next_read_makes_no_system_call() {
    let (mut server, mut client) = pair().await;
    let (_counter, waker) = counting_cx();
    let mut cx = Context::from_waker(&waker);
    client.write_all(b"ping").await.unwrap();
    let mut space = [0u8; 16];
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while got.len() < 4 {
        let mut buf = ReadBuf::new(&mut space);
        if Pin::new(&mut server)
            .poll_read(&mut cx, &mut buf)
            .is_ready()
        {
            got.extend_from_slice(buf.filled());
        }
        assert!(!server.is_registered() && std::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    assert_eq!(got, b"ping");
    client.write_all(b"more").await.unwrap();
    let State::Direct(direct) = &server.state else {
        panic!("registered before blocking");
    };
    let mut peeked = [0u8; 4];
    while direct.peek(&mut peeked).map_or(true, |n| n < 4) {
        assert!(std::time::Instant::now() < deadline, "`more` never arrived");
        tokio::task::yield_now().await;
    }
    // "more" is waiting, but the short read said the socket was drained.
    let mut buf = ReadBuf::new(&mut space);
    assert!(Pin::new(&mut server)
        .poll_read(&mut cx, &mut buf)
        .is_pending());
    assert!(buf.filled().is_empty() && !server.is_registered());
    let mut buf = ReadBuf::new(&mut space);
    assert!(Pin::new(&mut server)
        .poll_read(&mut cx, &mut buf)
        .is_ready());
    assert_eq!(buf.filled(), b"more");
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_deferred_listener_hands_over_connections_that_have_sent_something() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let acceptor = Acceptor::new(listener).unwrap();
    acceptor
        .defer_until_data(std::time::Duration::from_secs(30))
        .unwrap();
    let addr = acceptor.local_addr().unwrap();
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut talking = tokio::net::TcpStream::connect(addr).await.unwrap();
    talking.write_all(b"GET").await.unwrap();
    let (mut server, peer) = acceptor.accept().await.unwrap();
    assert_eq!(
        peer,
        talking.local_addr().unwrap(),
        "the silent one came first"
    );
    let mut buf = [0u8; 3];
    server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"GET");
    assert!(
        !server.is_registered(),
        "its request was there on the first read"
    );
}

/// Segments the peer's socket has received, by the kernel's count.
#[cfg(target_os = "linux")]
fn segments_in(s: &tokio::net::TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    info.tcpi_segs_in
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn held_last_writes_leave_with_the_fin() {
    let mut received = Vec::new();
    for hold in [false, true] {
        let (mut server, mut client) = pair().await;
        if hold {
            server.hold_until_shutdown();
        }
        server.write_all(b"the last response").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"the last response");
        received.push(segments_in(&client));
    }
    // SYN-ACK, data, FIN; then SYN-ACK, data with FIN.
    assert_eq!(received, [3, 2]);
}

#[tokio::test]
async fn a_held_write_that_blocks_still_arrives_whole_with_the_fin() {
    // More than loopback's socket buffers hold: the direct write blocks part way,
    // the socket joins the event loop, and the rest goes through the reactor (held
    // by the socket option there).
    const LEN: usize = 4 << 20;
    let (mut server, mut client) = pair().await;
    // Small buffers at both ends (no autotuning) keep the kernel from taking it all.
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 << 10)
        .unwrap();
    let State::Direct(direct) = &server.state else {
        panic!("a new socket is direct")
    };
    socket2::SockRef::from(direct)
        .set_send_buffer_size(64 << 10)
        .unwrap();
    let writer = tokio::spawn(async move {
        server.hold_until_shutdown();
        server.write_all(&vec![7u8; LEN]).await.unwrap();
        server.shutdown().await.unwrap();
        server
    });
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert_eq!(got.len(), LEN);
    assert!(got.iter().all(|&b| b == 7));
    let server = writer.await.unwrap();
    assert!(server.is_registered(), "the write never blocked");
}

fn nodelay(s: &LazySocket) -> bool {
    match &s.state {
        State::Direct(s) => s.nodelay().unwrap(),
        State::Registered(s) => s.nodelay().unwrap(),
        State::Broken => panic!("broken socket"),
    }
}

#[tokio::test]
async fn nodelay_waits_for_a_write_that_is_not_held() {
    let (mut last_only, _client) = pair().await;
    last_only.nodelay_from_first_write();
    last_only.hold_until_shutdown();
    last_only.write_all(b"the last response").await.unwrap();
    last_only.shutdown().await.unwrap();
    assert!(!nodelay(&last_only));

    let (mut kept, _client) = pair().await;
    kept.nodelay_from_first_write();
    assert!(!nodelay(&kept));
    kept.write_all(b"a response").await.unwrap();
    assert!(nodelay(&kept));
    // Once set it stays, held writes or not.
    kept.hold_until_shutdown();
    kept.write_all(b"the last one").await.unwrap();
    assert!(nodelay(&kept));
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_new_connections_request_is_acknowledged_by_its_response() {
    let acceptor = Acceptor::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = acceptor.local_addr().unwrap();
    // Whether the kernel acknowledges on its own depends on how soon the answer comes
    // (its delayed-ACK timer is 40 ms): a descheduled test may see that happen, so
    // one exchange of a few must show it. With quick ACKs on, none would.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        client.write_all(b"GET").await.unwrap();
        let (mut server, _) = acceptor.accept().await.unwrap();
        let mut buf = [0u8; 3];
        server.read_exact(&mut buf).await.unwrap();
        server.write_all(b"200").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"200");
        // SYN-ACK, the answer (carrying the request's ACK), FIN.
        seen.push(segments_in(&client));
        if seen.last() == Some(&3) {
            return;
        }
    }
    panic!("the request was acknowledged on its own every time: {seen:?}");
}
