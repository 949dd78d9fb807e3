//! Compression of stored objects: which responses qualify, and gzip/brotli encoding with
//! async-compression. Each object is compressed once per coding and the result cached.

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE};
use http::HeaderMap;
use tokio::io::AsyncReadExt;

use super::directives::ResponseDirectives;
use super::store::Coding;

/// Types worth compressing; images, video and archives are compressed already.
fn compressible_type(content_type: &str) -> bool {
    let t = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    t.starts_with("text/")
        || matches!(
            t.as_str(),
            "application/json"
                | "application/javascript"
                | "application/x-javascript"
                | "application/xml"
                | "application/xhtml+xml"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/ld+json"
                | "application/manifest+json"
                | "application/wasm"
                | "image/svg+xml"
                | "font/ttf"
                | "font/otf"
        )
        || t.ends_with("+json")
        || t.ends_with("+xml")
}

/// Whether we may and should compress a stored response for a client.
pub fn eligible(
    headers: &HeaderMap,
    body_len: usize,
    min_bytes: usize,
    directives: &ResponseDirectives,
    request_no_transform: bool,
) -> bool {
    if directives.no_transform || request_no_transform || body_len < min_bytes {
        return false;
    }
    let identity = headers
        .get(CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|v| v.trim().eq_ignore_ascii_case("identity"));
    let typed = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(compressible_type);
    identity && typed
}

pub async fn encode(coding: Coding, body: &[u8]) -> std::io::Result<Bytes> {
    let mut out = Vec::with_capacity(body.len() / 3 + 64);
    match coding {
        Coding::Identity => return Ok(Bytes::copy_from_slice(body)),
        Coding::Gzip => {
            async_compression::tokio::bufread::GzipEncoder::new(body)
                .read_to_end(&mut out)
                .await?;
        }
        Coding::Brotli => {
            // Quality 5: most of brotli's gain at a fraction of level 11's CPU; done once
            // per object, but a cold cache under load still pays it.
            async_compression::tokio::bufread::BrotliEncoder::with_quality(
                body,
                async_compression::Level::Precise(5),
            )
            .read_to_end(&mut out)
            .await?;
        }
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn typed(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_str(t).unwrap());
        h
    }

    #[test]
    fn only_compressible_identity_bodies_qualify() {
        let d = ResponseDirectives::default();
        assert!(eligible(
            &typed("text/html; charset=utf-8"),
            2000,
            1024,
            &d,
            false
        ));
        assert!(eligible(
            &typed("application/vnd.api+json"),
            2000,
            1024,
            &d,
            false
        ));
        assert!(!eligible(&typed("image/png"), 2000, 1024, &d, false));
        assert!(
            !eligible(&typed("text/html"), 100, 1024, &d, false),
            "too small"
        );
        assert!(
            !eligible(&typed("text/html"), 2000, 1024, &d, true),
            "request no-transform"
        );
        let nt = ResponseDirectives {
            no_transform: true,
            ..Default::default()
        };
        assert!(!eligible(&typed("text/html"), 2000, 1024, &nt, false));
        let mut gz = typed("text/html");
        gz.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        assert!(!eligible(&gz, 2000, 1024, &d, false), "already encoded");
    }

    #[tokio::test]
    async fn gzip_and_brotli_shrink_text_and_round_trip() {
        let text = "geoedge ".repeat(500);
        for coding in [Coding::Gzip, Coding::Brotli] {
            let out = encode(coding, text.as_bytes()).await.unwrap();
            assert!(out.len() < text.len() / 5, "{coding:?}: {}", out.len());
            let mut back = Vec::new();
            match coding {
                Coding::Gzip => {
                    async_compression::tokio::bufread::GzipDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .await
                        .unwrap();
                }
                _ => {
                    async_compression::tokio::bufread::BrotliDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .await
                        .unwrap();
                }
            }
            assert_eq!(back, text.as_bytes());
        }
    }
}
