//! An origin made of a raw socket, for tests that need response heads byte for byte (the
//! built-in origin answers through hyper, which spells every name in lower case) or an
//! origin that misbehaves on cue.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct RawOrigin {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

/// Serves each connection with `answer(n, path)` for its n-th request (from 0), which
/// gives the whole response, or None to close the connection instead. Requests are
/// expected without a body, as the proxy sends GETs.
pub fn raw_origin<F>(answer: F) -> RawOrigin
where
    F: Fn(usize, &str) -> Option<String> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            counted.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            std::thread::spawn(move || serve(stream, &*answer));
        }
    });
    RawOrigin { addr, connections }
}

fn serve(mut stream: TcpStream, answer: &dyn Fn(usize, &str) -> Option<String>) {
    let Ok(reader) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(reader);
    for n in 0.. {
        let Some(path) = read_head(&mut reader) else {
            return;
        };
        let Some(response) = answer(n, &path) else {
            return;
        };
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Reads a request head; returns its path.
fn read_head(reader: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|&n| n > 0)?;
    let path = line.split_whitespace().nth(1)?.to_string();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok().filter(|&n| n > 0)?;
        if header == "\r\n" {
            return Some(path);
        }
    }
}
