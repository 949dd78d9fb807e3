//! Line I/O on an FTP control connection: lines up to a maximum length (a longer one is
//! an error, not a growing buffer), written whole and flushed. The stream can be taken
//! back for a TLS upgrade only when nothing past the `AUTH TLS` line has been read: a
//! client that pipelines commands behind it (the STARTTLS injection of CVE-2011-0411)
//! is cut off instead.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub struct LineConn<S> {
    io: S,
    buf: Vec<u8>,
    max_line: usize,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line without its CRLF (or bare LF).
    Text(Vec<u8>),
    TooLong,
    /// The peer closed the connection (a partial last line is dropped).
    Closed,
}

impl<S: AsyncRead + AsyncWrite + Unpin> LineConn<S> {
    pub fn new(io: S, max_line: usize) -> Self {
        Self {
            io,
            buf: Vec::new(),
            max_line,
        }
    }

    pub async fn read_line(&mut self) -> io::Result<Line> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                if end > self.max_line {
                    return Ok(Line::TooLong);
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(Line::Text(line));
            }
            if self.buf.len() > self.max_line {
                return Ok(Line::TooLong);
            }
            let mut chunk = [0u8; 2048];
            let n = self.io.read(&mut chunk).await?;
            if n == 0 {
                return Ok(Line::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// The stream back, for a TLS upgrade; Err when bytes beyond the last line wait.
    pub fn into_stream(self) -> Result<S, S> {
        if self.buf.is_empty() {
            Ok(self.io)
        } else {
            Err(self.io)
        }
    }

    pub fn max_line(&self) -> usize {
        self.max_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn lines_split_on_crlf_or_lf_and_long_ones_are_refused() {
        rt().block_on(async {
            let (mut far, near) = tokio::io::duplex(4096);
            let mut conn = LineConn::new(near, 64);
            far.write_all(b"USER anonymous\r\nPASS x\nSYST")
                .await
                .unwrap();
            assert_eq!(
                conn.read_line().await.unwrap(),
                Line::Text(b"USER anonymous".to_vec())
            );
            assert_eq!(
                conn.read_line().await.unwrap(),
                Line::Text(b"PASS x".to_vec())
            );
            far.write_all(&[b'a'; 100]).await.unwrap();
            assert_eq!(conn.read_line().await.unwrap(), Line::TooLong);
        });
    }

    #[test]
    fn the_stream_is_given_back_only_when_nothing_is_buffered() {
        rt().block_on(async {
            let (mut far, near) = tokio::io::duplex(4096);
            let mut conn = LineConn::new(near, 64);
            far.write_all(b"AUTH TLS\r\n").await.unwrap();
            conn.read_line().await.unwrap();
            assert!(conn.into_stream().is_ok());

            let (mut far, near) = tokio::io::duplex(4096);
            let mut conn = LineConn::new(near, 64);
            far.write_all(b"AUTH TLS\r\nUSER smuggled\r\n")
                .await
                .unwrap();
            conn.read_line().await.unwrap();
            assert!(conn.into_stream().is_err());
        });
    }

    #[test]
    fn a_closed_peer_is_told_apart() {
        rt().block_on(async {
            let (far, near) = tokio::io::duplex(64);
            drop(far);
            let mut conn = LineConn::new(near, 64);
            assert_eq!(conn.read_line().await.unwrap(), Line::Closed);
        });
    }
}
