//! What went wrong with a proxied request, who is to blame, and what the client gets.
//! The same fact drives the status code, the retry decision and the metric label.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No route serves this Host.
    #[error("no route for host {0:?}")]
    UnknownHost(Option<String>),
    #[error("no route for this path")]
    NoRoute,
    #[error("request framing is ambiguous: {0}")]
    BadFraming(&'static str),
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    /// The client's body failed while it was being forwarded (cut short, or longer than
    /// it said).
    #[error("client request body: {0}")]
    ClientBody(String),
    #[error("no healthy origin in upstream {0}")]
    NoHealthyOrigin(String),
    /// No origin here, and no peer region's proxy up to forward to.
    #[error("no healthy origin in upstream {upstream}, and no peer region up ({tried})")]
    NoRegion { upstream: String, tried: String },
    /// A request a peer region forwarded, which this region cannot serve either: it is
    /// not forwarded again.
    #[error("no healthy origin in upstream {upstream} for a request forwarded by region {from}; not forwarded again")]
    HopRefused { upstream: String, from: String },
    #[error("cannot reach origin {origin}: {message}")]
    Connect { origin: String, message: String },
    #[error("origin {origin} failed: {message}")]
    Upstream { origin: String, message: String },
    #[error("origin {origin} sent no response headers within {seconds}s")]
    Timeout { origin: String, seconds: f64 },
    #[error("request target longer than allowed")]
    UriTooLong,
    #[error("HTTP major version not supported")]
    VersionNotSupported,
    #[error("too many query parameters")]
    TooManyParams,
    #[error("client address not allowed on this route")]
    AddressDenied,
    #[error("this route needs a client certificate, and the connection has none")]
    ClientCertRequired,
    #[error("denied by rule {rule}")]
    RuleDenied { rule: String, status: u16 },
    #[error("over the {scope} rate limit")]
    RateLimited {
        scope: &'static str,
        retry_after_secs: u64,
    },
    #[error("authentication required for realm {realm}")]
    Unauthorized { realm: String },
}

/// Who failed: the metric label and log field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::UnknownHost(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BadFraming(_) | ProxyError::ClientBody(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoHealthyOrigin(_)
            | ProxyError::NoRegion { .. }
            | ProxyError::HopRefused { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::VersionNotSupported => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            ProxyError::TooManyParams => StatusCode::BAD_REQUEST,
            ProxyError::AddressDenied | ProxyError::ClientCertRequired => StatusCode::FORBIDDEN,
            ProxyError::RuleDenied { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN)
            }
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::UnknownHost(_)
            | ProxyError::NoRoute
            | ProxyError::BadFraming(_)
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientBody(_)
            | ProxyError::UriTooLong
            | ProxyError::VersionNotSupported
            | ProxyError::TooManyParams
            | ProxyError::AddressDenied
            | ProxyError::ClientCertRequired
            | ProxyError::RuleDenied { .. }
            | ProxyError::RateLimited { .. }
            | ProxyError::Unauthorized { .. } => Blame::Client,
            _ => Blame::Upstream,
        }
    }

    /// The body the client sees: short, and without origin names or addresses.
    pub fn public_message(&self) -> &'static str {
        match self {
            ProxyError::UnknownHost(_) => {
                "421 Misdirected Request: this server has no site by that name\n"
            }
            ProxyError::NoRoute => "404 Not Found\n",
            ProxyError::BadFraming(_) => "400 Bad Request: ambiguous message framing\n",
            ProxyError::BodyTooLarge { .. } => "413 Content Too Large\n",
            ProxyError::ClientBody(_) => "400 Bad Request: request body incomplete\n",
            ProxyError::NoHealthyOrigin(_) => "503 Service Unavailable: no healthy origin\n",
            ProxyError::NoRegion { .. } => {
                "503 Service Unavailable: no healthy origin in this region, and no other region could take the request\n"
            }
            ProxyError::HopRefused { .. } => {
                "503 Service Unavailable: no healthy origin in this region either; the request was already forwarded once by failover and is not forwarded again\n"
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => "502 Bad Gateway\n",
            ProxyError::Timeout { .. } => "504 Gateway Timeout\n",
            ProxyError::UriTooLong => "414 URI Too Long\n",
            ProxyError::VersionNotSupported => "505 HTTP Version Not Supported\n",
            ProxyError::TooManyParams => "400 Bad Request: too many query parameters\n",
            ProxyError::AddressDenied => "403 Forbidden\n",
            ProxyError::ClientCertRequired => "403 Forbidden: a client certificate is required\n",
            ProxyError::RuleDenied { .. } => "Request denied\n",
            ProxyError::RateLimited { .. } => "429 Too Many Requests\n",
            ProxyError::Unauthorized { .. } => "401 Unauthorized\n",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_blame() {
        assert_eq!(ProxyError::UnknownHost(None).status(), 421);
        assert_eq!(ProxyError::NoHealthyOrigin("u".into()).status(), 503);
        let t = ProxyError::Timeout {
            origin: "o".into(),
            seconds: 1.0,
        };
        assert_eq!(t.status(), 504);
        assert_eq!(t.blame(), Blame::Upstream);
        assert_eq!(ProxyError::BodyTooLarge { limit: 1 }.blame(), Blame::Client);
        assert!(!t.public_message().contains('o') || !t.public_message().contains("origin o"));
    }
}
