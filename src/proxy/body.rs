//! Body types on the way through: one boxed type for everything the proxy sends, and the
//! origin response body that releases its connection and in-flight count when done.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

use crate::proxy::upstream::group::{InFlight, OriginState};
use crate::proxy::upstream::origin_conn::ResponseBody;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// An origin's response body on its way to the client. When the origin has sent it all,
/// the connection goes back to the pool; if the client goes away first, the connection is
/// dropped (its state is unknown). Either way the in-flight count goes down on drop.
pub struct OriginBody {
    inner: ResponseBody,
    pool: Arc<OriginState>,
    _in_flight: InFlight,
}

impl OriginBody {
    pub fn new(inner: ResponseBody, pool: Arc<OriginState>, in_flight: InFlight) -> Self {
        let mut body = Self {
            inner,
            pool,
            _in_flight: in_flight,
        };
        body.release_if_done();
        body
    }

    fn release_if_done(&mut self) {
        if let Some(conn) = self.inner.take_reusable() {
            self.pool.put_idle(conn);
        }
    }
}

impl Body for OriginBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None | Some(Ok(_))) = polled {
            // The last frame often arrives with the end: give the connection back now,
            // not a poll later.
            this.release_if_done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose first bytes were already read (while deciding whether to cache it),
/// followed by the rest of the original stream.
pub struct PrefixedBody {
    prefix: Option<Bytes>,
    rest: ProxyBody,
}

impl PrefixedBody {
    pub fn new(prefix: Bytes, rest: ProxyBody) -> Self {
        Self {
            prefix: Some(prefix),
            rest,
        }
    }
}

impl Body for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}
