//! A response on its way to a client: the origin's field lines passed through, if any,
//! then the proxy's own headers (`Via`, a sticky cookie, or a whole response the proxy
//! made). `fast_h1` writes the lines as they are; everything else takes a `Response`.

use http::Response;

use crate::proxy::body::ProxyBody;
use crate::proxy::header_lines::HeaderLines;

pub struct Answer {
    /// Status, the proxy's headers (after `passed` on the wire), extensions and body.
    pub response: Response<ProxyBody>,
    /// The origin's fields that go on, already cleaned of hop-by-hop and hidden ones.
    pub passed: HeaderLines,
}

impl From<Response<ProxyBody>> for Answer {
    fn from(response: Response<ProxyBody>) -> Self {
        Self {
            response,
            passed: HeaderLines::default(),
        }
    }
}

impl Answer {
    /// The first value of the field `name` (lower case), passed or the proxy's own.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.passed
            .get(name)
            .or_else(|| self.response.headers().get(name).map(|v| v.as_bytes()))
    }

    /// Every field as (name, value), in the order they go out.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.passed.iter().chain(
            self.response
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
        )
    }

    /// The whole response, with the passed fields first in its `HeaderMap`.
    pub fn into_response(self) -> Response<ProxyBody> {
        let Self {
            mut response,
            passed,
        } = self;
        if passed.is_empty() {
            return response;
        }
        let mut map = passed.to_header_map();
        for (name, value) in response.headers() {
            map.append(name.clone(), value.clone());
        }
        *response.headers_mut() = map;
        response
    }
}
