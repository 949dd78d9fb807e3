//! Request and response bodies for unit tests: given chunks, streamed one frame each.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::proxy::body::{BoxError, ProxyBody};

/// Sends its chunks one frame each, and claims an exact size if given one (true or not).
pub struct Chunks {
    chunks: VecDeque<Bytes>,
    claimed: Option<u64>,
}

impl Chunks {
    pub fn new(chunks: &[&'static [u8]], claimed: Option<u64>) -> Self {
        Self {
            chunks: chunks.iter().map(|c| Bytes::from_static(c)).collect(),
            claimed,
        }
    }
}

/// A body of the given chunks whose size is not known up front, as a client or origin
/// that streams without a length sends it.
pub fn unsized_body(chunks: &[&'static [u8]]) -> ProxyBody {
    Chunks::new(chunks, None).boxed_unsync()
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.chunks.pop_front().map(|b| Ok(Frame::data(b))))
    }
    fn size_hint(&self) -> SizeHint {
        self.claimed
            .map_or_else(SizeHint::new, SizeHint::with_exact)
    }
}
