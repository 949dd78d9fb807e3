//! Client sockets that join the event loop only when they would block.
//!
//! tokio registers every accepted socket with epoll and removes it again on close: two
//! `epoll_ctl` calls per connection, 5 % of our CPU with a new connection per request. And
//! a freshly registered socket reads nothing until epoll has reported it, although the
//! request is usually waiting already. HAProxy reads and writes a new connection at once
//! and subscribes only when it would block; so do we. A connection answered and closed
//! without ever blocking never touches epoll.

use std::io;
#[cfg(not(target_os = "linux"))]
use std::io::Write;
use std::net::{Shutdown, SocketAddr};
#[cfg(target_os = "linux")]
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// The most a direct read asks for.
const DIRECT_READ_BYTES: usize = 2048;

/// Accepts connections as plain non-blocking sockets.
pub struct Acceptor {
    listener: AsyncFd<socket2::Socket>,
}

/// Connections the kernel queues for us before it refuses more (it caps this at
/// `net.core.somaxconn`). std's 128 overflows in a burst of new connections; HAProxy asks
/// for thousands, nginx for 511.
pub const LISTEN_BACKLOG: libc::c_int = 4096;

impl Acceptor {
    /// Binds and listens on `addr` for client connections.
    ///
    /// The listener also turns the kernel's quick acknowledgements off, as HAProxy's
    /// `tcp-smart-accept` does: a new connection's first request is then acknowledged by
    /// the response, not by a packet of its own just before it (one segment fewer per
    /// connection, for both ends to process).
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(LISTEN_BACKLOG)?;
        #[cfg(target_os = "linux")]
        socket.set_tcp_quickack(false)?;
        socket.set_nonblocking(true)?;
        Self::register(socket)
    }

    pub fn new(listener: TcpListener) -> io::Result<Self> {
        let std = listener.into_std()?;
        std.set_nonblocking(true)?;
        Self::register(socket2::Socket::from(std))
    }

    fn register(socket: socket2::Socket) -> io::Result<Self> {
        // SAFETY: the socket owns its descriptor and the AsyncFd owns the socket, so the
        // descriptor stays open and the same for the AsyncFd's whole life.
        let listener = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }?;
        Ok(Self { listener })
    }

    /// Has the kernel hold each connection until its first bytes arrive (or `wait`
    /// passes), as nginx's `listen ... deferred` and HAProxy's `defer-accept` do: the
    /// direct read after accepting then finds the request instead of nothing, and a
    /// connection that would otherwise join the event loop to wait for it does not.
    #[cfg(target_os = "linux")]
    pub fn defer_until_data(&self, wait: std::time::Duration) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let secs = libc::c_int::try_from(wait.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: a valid socket descriptor, and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                self.listener.get_ref().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::from_ref(&secs).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub fn defer_until_data(&self, _wait: std::time::Duration) -> io::Result<()> {
        Ok(())
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener
            .get_ref()
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listener address is not IP"))
    }

    pub async fn accept(&self) -> io::Result<(LazySocket, SocketAddr)> {
        loop {
            let mut ready = self.listener.readable().await?;
            match ready.try_io(|l| accept_nonblocking(l.get_ref())) {
                Ok(result) => {
                    let (socket, peer) = result?;
                    let peer = peer
                        .as_socket()
                        .ok_or_else(|| io::Error::other("peer address is not IP"))?;
                    return Ok((LazySocket::new(socket.into()), peer));
                }
                // Nothing to accept after all; readiness is cleared, wait again.
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn accept_nonblocking(l: &socket2::Socket) -> io::Result<(socket2::Socket, socket2::SockAddr)> {
    // One system call: non-blocking and close-on-exec from the start.
    l.accept4(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
}

#[cfg(not(target_os = "linux"))]
fn accept_nonblocking(l: &socket2::Socket) -> io::Result<(socket2::Socket, socket2::SockAddr)> {
    let (s, addr) = l.accept()?;
    s.set_nonblocking(true)?;
    Ok((s, addr))
}

/// An accepted connection: used directly until an operation would block, then handed to
/// tokio's reactor for good.
pub struct LazySocket {
    state: State,
    /// A direct read has found nothing once already.
    read_blocked_once: bool,
    /// The last direct read took less than it asked for, so the socket is drained: the
    /// next read would find nothing (tokio's reactor makes the same inference).
    drained: bool,
    /// TCP_NODELAY is wanted and not yet set. It is set before the first write that is not
    /// held for the shutdown: a connection whose only write is its last (a new connection
    /// per request) never needs it, and goes without the system call.
    nodelay_due: bool,
    /// Writes are held until shutdown (see `LastWrites`).
    hold: bool,
}

enum State {
    Direct(std::net::TcpStream),
    Registered(TcpStream),
    /// Registration failed; the error was returned once.
    Broken,
}

impl LazySocket {
    /// `socket` must be in non-blocking mode.
    pub fn new(socket: std::net::TcpStream) -> Self {
        Self {
            state: State::Direct(socket),
            read_blocked_once: false,
            drained: false,
            nodelay_due: false,
            hold: false,
        }
    }

    /// Turns Nagle's algorithm off from the first write that is not held for the
    /// shutdown on; held writes leave with the FIN whatever the setting.
    pub fn nodelay_from_first_write(&mut self) {
        self.nodelay_due = true;
    }

    /// What is due before a write: TCP_NODELAY, unless this write is held.
    fn before_write(&mut self) {
        if self.nodelay_due && !self.hold {
            self.nodelay_due = false;
            // Best effort, as tokio's own: a socket that refuses it still works.
            let _ = match &self.state {
                State::Direct(s) => s.set_nodelay(true),
                State::Registered(s) => s.set_nodelay(true),
                State::Broken => Ok(()),
            };
        }
    }

    /// Copies the bytes waiting on the socket into `buf` without taking them, waiting for
    /// some if there are none (0: the peer closed). Successive calls see the same bytes
    /// until they are read.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let State::Direct(s) = &self.state {
            match s.peek(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
        }
        self.register()?.peek(buf).await
    }

    /// Hands the socket to the reactor, after a direct operation would have blocked.
    fn register(&mut self) -> io::Result<&mut TcpStream> {
        if matches!(self.state, State::Direct(_)) {
            if let State::Direct(std) = std::mem::replace(&mut self.state, State::Broken) {
                if self.hold {
                    // The reactor's writes take no flags: hold them with the socket
                    // option instead.
                    let _ = cork(socket2::SockRef::from(&std));
                }
                self.state = State::Registered(TcpStream::from_std(std)?);
            }
        }
        match &mut self.state {
            State::Registered(s) => Ok(s),
            _ => Err(io::Error::other("socket could not join the event loop")),
        }
    }
}

/// Runs `op` on the socket directly while it has not blocked; the first WouldBlock hands
/// the socket to the reactor and `reactor` takes over, registering the waker.
fn direct_or<T>(
    socket: &mut LazySocket,
    cx: &mut Context<'_>,
    mut op: impl FnMut(&mut std::net::TcpStream) -> io::Result<T>,
    reactor: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<io::Result<T>>,
) -> Poll<io::Result<T>> {
    if let State::Direct(s) = &mut socket.state {
        loop {
            match op(s) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                done => return Poll::Ready(done),
            }
        }
    }
    match socket.register() {
        Ok(s) => reactor(Pin::new(s), cx),
        Err(e) => Poll::Ready(Err(e)),
    }
}

impl AsyncRead for LazySocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let State::Direct(s) = &mut this.state {
            // After a short read the socket is drained: skip the system call that would
            // find nothing.
            while !std::mem::take(&mut this.drained) {
                // A request head's worth (hyper offers 8 KiB; a longer head takes another
                // read).
                let want = buf.remaining().min(DIRECT_READ_BYTES);
                match read_into(s, buf, want) {
                    Ok(n) => {
                        this.drained = n > 0 && n < want;
                        return Poll::Ready(Ok(()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            // hyper also reads while a request is being answered, to notice a client
            // that left. The first time there is nothing, come back once more before
            // registering: a connection answered and closed in the meantime never needs
            // the reactor.
            if !this.read_blocked_once {
                this.read_blocked_once = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        match this.register() {
            Ok(s) => Pin::new(s).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Reads at most `want` bytes into the unfilled part of `buf` and marks them filled.
#[cfg(unix)]
fn read_into(s: &std::net::TcpStream, buf: &mut ReadBuf<'_>, want: usize) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let want = want.min(buf.remaining());
    // SAFETY: the kernel writes at most `want` bytes, all within the unfilled part, and
    // only as many as it reports are marked initialised and filled. (Through `Read`, the
    // spare space would have to be zeroed first: 2 KiB of memset per new connection.)
    unsafe {
        let unfilled = buf.unfilled_mut();
        let n = libc::recv(s.as_raw_fd(), unfilled.as_mut_ptr().cast(), want, 0);
        let n = usize::try_from(n).map_err(|_| io::Error::last_os_error())?;
        buf.assume_init(n);
        buf.advance(n);
        Ok(n)
    }
}

#[cfg(not(unix))]
fn read_into(s: &std::net::TcpStream, buf: &mut ReadBuf<'_>, want: usize) -> io::Result<usize> {
    let n = std::io::Read::read(&mut &*s, buf.initialize_unfilled_to(want))?;
    buf.advance(n);
    Ok(n)
}

#[cfg(target_os = "linux")]
fn send_direct(s: &std::net::TcpStream, data: &[u8], hold: bool) -> io::Result<usize> {
    socket2::SockRef::from(s).send_with_flags(data, send_flags(hold))
}

#[cfg(target_os = "linux")]
fn send_vectored_direct(
    s: &std::net::TcpStream,
    bufs: &[io::IoSlice<'_>],
    hold: bool,
) -> io::Result<usize> {
    socket2::SockRef::from(s).send_vectored_with_flags(bufs, send_flags(hold))
}

#[cfg(not(target_os = "linux"))]
fn send_direct(s: &std::net::TcpStream, data: &[u8], _hold: bool) -> io::Result<usize> {
    (&*s).write(data)
}

#[cfg(not(target_os = "linux"))]
fn send_vectored_direct(
    s: &std::net::TcpStream,
    bufs: &[io::IoSlice<'_>],
    _hold: bool,
) -> io::Result<usize> {
    (&*s).write_vectored(bufs)
}

/// Whether a stream's socket has joined the event loop (and so is past its first exchange).
pub trait Registered {
    fn is_registered(&self) -> bool;
}

impl Registered for LazySocket {
    fn is_registered(&self) -> bool {
        matches!(self.state, State::Registered(_))
    }
}

impl<S: Registered> Registered for tokio_rustls::server::TlsStream<S> {
    fn is_registered(&self) -> bool {
        self.get_ref().0.is_registered()
    }
}

/// A stream about to send its last bytes: what is written from now on waits until
/// shutdown, so a closing connection's last response (and TLS close_notify) leaves in one
/// segment with the FIN instead of data, a client ACK, then a bare FIN. Only for a stream
/// that is shut down right after: held bytes otherwise wait for the next write (up to
/// 200 ms once the socket has joined the event loop).
pub trait LastWrites {
    fn hold_until_shutdown(&mut self);
}

impl LastWrites for LazySocket {
    fn hold_until_shutdown(&mut self) {
        self.hold = true;
        // A direct write says so itself (MSG_MORE, no extra system call); the reactor's
        // writes need the socket option. Best effort: without it the FIN just goes in a
        // segment of its own.
        if let State::Registered(s) = &self.state {
            let _ = cork(socket2::SockRef::from(s));
        }
    }
}

/// The flags of a direct write: held ones wait for more (the shutdown pushes them out).
#[cfg(target_os = "linux")]
fn send_flags(hold: bool) -> libc::c_int {
    // As std's own writes: a closed peer is an error, not SIGPIPE.
    libc::MSG_NOSIGNAL | if hold { libc::MSG_MORE } else { 0 }
}

#[cfg(target_os = "linux")]
fn cork(s: socket2::SockRef<'_>) -> io::Result<()> {
    s.set_tcp_cork(true)
}

#[cfg(not(target_os = "linux"))]
fn cork(_: socket2::SockRef<'_>) -> io::Result<()> {
    Ok(())
}

impl<S: LastWrites> LastWrites for tokio_rustls::server::TlsStream<S> {
    fn hold_until_shutdown(&mut self) {
        self.get_mut().0.hold_until_shutdown();
    }
}

/// A stream that can send part of a file without the bytes passing through user space.
pub trait SendFile {
    /// Whether `poll_send_file` works here; not over TLS, which encrypts in user space.
    fn can_send_file(&self) -> bool {
        false
    }

    /// Writes what goes before a file's bytes (a response head), held back until they
    /// follow, so that both leave in the same segment.
    fn poll_write_before_file(
        &mut self,
        _cx: &mut Context<'_>,
        _data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }

    /// Sends up to `len` bytes of `file` from `offset`, as `poll_write` would send them.
    fn poll_send_file(
        &mut self,
        _cx: &mut Context<'_>,
        _file: &std::fs::File,
        _offset: u64,
        _len: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

impl<S> SendFile for tokio_rustls::server::TlsStream<S> {}

#[cfg(target_os = "linux")]
impl SendFile for LazySocket {
    fn can_send_file(&self) -> bool {
        !matches!(self.state, State::Broken)
    }

    fn poll_write_before_file(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.before_write();
        // MSG_MORE: the file's first pages join these bytes in one segment.
        let send = |fd: BorrowedFd<'_>| {
            socket2::SockRef::from(&fd).send_with_flags(data, send_flags(true))
        };
        direct_or(
            self,
            cx,
            |s| send(s.as_fd()),
            |s, cx| when_writable(&s, cx, send),
        )
    }

    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        self.before_write();
        let send = |fd: BorrowedFd<'_>| {
            let mut at = offset;
            rustix::fs::sendfile(fd, file, Some(&mut at), len).map_err(io::Error::from)
        };
        direct_or(
            self,
            cx,
            |s| send(s.as_fd()),
            |s, cx| when_writable(&s, cx, send),
        )
    }
}

#[cfg(not(target_os = "linux"))]
impl SendFile for LazySocket {}

/// Runs `send` on a registered socket once it is writable, waiting again (with the
/// waker registered) while it would block: for sends the reactor has no method for.
#[cfg(target_os = "linux")]
fn when_writable(
    s: &TcpStream,
    cx: &mut Context<'_>,
    send: impl Fn(BorrowedFd<'_>) -> io::Result<usize>,
) -> Poll<io::Result<usize>> {
    loop {
        std::task::ready!(s.poll_write_ready(cx))?;
        match s.try_io(Interest::WRITABLE, || send(s.as_fd())) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            done => return Poll::Ready(done),
        }
    }
}

impl AsyncWrite for LazySocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.before_write();
        let hold = this.hold;
        direct_or(
            this,
            cx,
            |s| send_direct(s, data, hold),
            |s, cx| s.poll_write(cx, data),
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.before_write();
        let hold = this.hold;
        direct_or(
            this,
            cx,
            |s| send_vectored_direct(s, bufs, hold),
            |s, cx| s.poll_write_vectored(cx, bufs),
        )
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Registered(s) => Pin::new(s).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            State::Direct(s) => Poll::Ready(s.shutdown(Shutdown::Write)),
            State::Registered(s) => Pin::new(s).poll_shutdown(cx),
            State::Broken => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
#[path = "lazy_socket_tests.rs"]
mod tests;
