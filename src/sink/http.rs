//! HTTP plumbing shared by the Telegram and webhook sinks and receipts: the
//! one pooled client, turning a failed exchange into an [`Outcome`], reading
//! a capped body, `Retry-After`, and scrubbing secrets out of error text.
//!
//! Owns the client's settings and the mapping of client errors to transport
//! kinds. Leaves what a status or body means to each sink and the taxonomy.
//!
//! Invariant: no text produced here carries a request URL (reqwest's errors
//! name the URL, and a Bot API URL holds the token): every error goes through
//! [`describe`], which drops it.

use std::error::Error as StdError;
use std::io;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use reqwest::header::{HeaderMap, RETRY_AFTER};

use super::SinkError;
use crate::engine::taxonomy::{Outcome, TransportKind};

/// Idle keep-alive connections kept per host: enough for Telegram's 30/s
/// at a few hundred ms per round trip without reconnecting.
const MAX_IDLE_PER_HOST: usize = 64;
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// An upper bound below the per-attempt timeout callers pass; a connect that
/// takes this long is dead anyway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP client every sink and the receipt sender share (clone it: it is a
/// handle to one connection pool). Redirects are not followed: a Bot API URL
/// carries the token and must not be replayed to another host, and a
/// redirected webhook POST would turn into a GET; a 3xx is reported as is.
/// Proxies come from `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`. TLS is rustls
/// with the platform's root certificates (the image sets `SSL_CERT_FILE`).
pub fn http_client() -> Result<reqwest::Client, SinkError> {
    reqwest::Client::builder()
        .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .build()
        .map_err(|e| SinkError::Client(describe(e)))
}

/// A failed exchange as an outcome plus a secret-free description.
pub(crate) fn failure(err: reqwest::Error) -> (Outcome, String) {
    let outcome = outcome_of(&err);
    (outcome, describe(err))
}

/// The error and its causes, `: `-joined, without the request URL.
pub(crate) fn describe(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        // hyper and hyper-util often repeat their cause in their own text.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Replaces every occurrence of `secret` in `text`; a second line of defence
/// behind [`describe`] for texts built around a Bot API URL.
pub(crate) fn scrub(text: String, secret: &str) -> String {
    if secret.is_empty() || !text.contains(secret) {
        return text;
    }
    text.replace(secret, "<redacted>")
}

fn outcome_of(err: &reqwest::Error) -> Outcome {
    if err.is_timeout() {
        return Outcome::Timeout;
    }
    classify_chain(err, err.is_connect())
}

/// The transport kind of an error chain. `connecting` says whether the
/// failure happened while opening the connection (TCP or TLS).
///
/// hyper-util names resolver failures "dns error"; rustls reports through
/// tokio-rustls as `io::ErrorKind::InvalidData`, which a plain TCP connect
/// never produces; hyper reports a peer that hung up mid-exchange as an
/// incomplete message.
pub(crate) fn classify_chain(err: &(dyn StdError + 'static), connecting: bool) -> Outcome {
    let mut io_kinds = Vec::new();
    let mut dns = false;
    let mut hung_up = false;
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(h) = e.downcast_ref::<hyper::Error>() {
            hung_up |= h.is_incomplete_message() || h.is_canceled() || h.is_closed();
        }
        let text = e.to_string().to_ascii_lowercase();
        dns |= text.contains("dns error") || text.contains("failed to lookup address");
        source = match e.downcast_ref::<io::Error>() {
            Some(io) => {
                io_kinds.push(io.kind());
                // An io::Error's `source` skips the error it wraps (hyper-rustls
                // wraps tokio-rustls' InvalidData in an `Other`): step into it.
                match io.get_ref() {
                    Some(inner) => Some(inner as &(dyn StdError + 'static)),
                    None => e.source(),
                }
            }
            None => e.source(),
        };
    }
    let any = |kinds: &[io::ErrorKind]| io_kinds.iter().any(|k| kinds.contains(k));
    const RESET: &[io::ErrorKind] = &[
        io::ErrorKind::ConnectionReset,
        io::ErrorKind::ConnectionAborted,
        io::ErrorKind::BrokenPipe,
        io::ErrorKind::UnexpectedEof,
        io::ErrorKind::NotConnected,
    ];
    let kind = if dns {
        TransportKind::Dns
    } else if any(&[io::ErrorKind::TimedOut]) {
        return Outcome::Timeout;
    } else if connecting && any(&[io::ErrorKind::InvalidData]) {
        TransportKind::Tls
    } else if connecting && !any(RESET) {
        TransportKind::Connect
    } else if hung_up || any(RESET) {
        TransportKind::Reset
    } else {
        TransportKind::Other
    };
    Outcome::Transport(kind)
}

/// A response body read up to `limit` bytes; `complete` is false when the
/// peer sent more (the rest is left unread and the connection dropped).
pub(crate) struct CappedBody {
    pub bytes: Bytes,
    pub complete: bool,
}

pub(crate) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<CappedBody, reqwest::Error> {
    let declared = response.content_length().unwrap_or(0);
    let mut buf = BytesMut::with_capacity(usize::try_from(declared).unwrap_or(0).min(limit));
    while let Some(chunk) = response.chunk().await? {
        let room = limit - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            return Ok(CappedBody {
                bytes: buf.freeze(),
                complete: false,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(CappedBody {
        bytes: buf.freeze(),
        complete: true,
    })
}

/// Seconds to wait from a `Retry-After` header: delta-seconds or an
/// HTTP-date (rounded up, 0 when already past). `None` when absent or
/// unreadable.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<u64> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(match at.duration_since(now) {
        Ok(wait) => wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
        Err(_) => 0,
    })
}

/// Unix seconds now, for `X-Herald-Timestamp`.
pub(crate) fn unix_now() -> u64 {
    crate::clock::now_ms() / 1000
}

/// `scheme://host[:port]/path` of a URL: no user info, no query, no
/// fragment, which may carry credentials. For `Debug` and logs.
pub(crate) fn redacted_url(url: &reqwest::Url) -> String {
    let mut out = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        out.push_str(&format!(":{port}"));
    }
    out.push_str(url.path());
    if url.query().is_some() {
        out.push_str("?<redacted>");
    }
    out
}

/// Parses an absolute `http(s)` URL with a host. The error names what is
/// wrong, never the URL (it may hold credentials).
pub(crate) fn parse_http_url(text: &str) -> Result<reqwest::Url, &'static str> {
    let url = reqwest::Url::parse(text.trim()).map_err(|_| "not an absolute URL")?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("scheme must be http or https");
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host");
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Wrap(
        &'static str,
        Option<Box<dyn StdError + Send + Sync + 'static>>,
    );

    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Wrap {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn StdError + 'static))
        }
    }

    fn chain(top: &'static str, io: Option<io::Error>) -> Wrap {
        Wrap(
            top,
            io.map(|e| Box::new(e) as Box<dyn StdError + Send + Sync>),
        )
    }

    #[test]
    fn classifies_error_chains() {
        let dns = chain(
            "dns error",
            Some(io::Error::other("failed to lookup address information")),
        );
        assert_eq!(
            classify_chain(&dns, true),
            Outcome::Transport(TransportKind::Dns)
        );
        let refused = chain(
            "tcp connect error",
            Some(io::ErrorKind::ConnectionRefused.into()),
        );
        assert_eq!(
            classify_chain(&refused, true),
            Outcome::Transport(TransportKind::Connect)
        );
        // As hyper-rustls reports it: InvalidData wrapped in an Other.
        let tls = chain(
            "client error (Connect)",
            Some(io::Error::other(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad cert",
            ))),
        );
        assert_eq!(
            classify_chain(&tls, true),
            Outcome::Transport(TransportKind::Tls)
        );
        let reset = chain("read", Some(io::ErrorKind::ConnectionReset.into()));
        assert_eq!(
            classify_chain(&reset, false),
            Outcome::Transport(TransportKind::Reset)
        );
        assert_eq!(
            classify_chain(&reset, true),
            Outcome::Transport(TransportKind::Reset)
        );
        let timed_out = chain("connect", Some(io::ErrorKind::TimedOut.into()));
        assert_eq!(classify_chain(&timed_out, true), Outcome::Timeout);
        let odd = chain("something", None);
        assert_eq!(
            classify_chain(&odd, false),
            Outcome::Transport(TransportKind::Other)
        );
    }

    #[tokio::test]
    async fn described_errors_drop_the_url_reqwest_would_print() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let url = format!("http://{addr}/bot42:SECRET-part/sendMessage");
        let err = http_client().unwrap().post(&url).send().await.unwrap_err();
        // The raw error names the URL, token and all: why `describe` exists.
        assert!(err.to_string().contains("SECRET-part"));
        let (outcome, text) = failure(err);
        assert_eq!(outcome, Outcome::Transport(TransportKind::Connect));
        assert!(!text.contains("SECRET-part"), "{text}");
        assert!(text.contains("onnect"), "{text}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, now), None);
        h.insert(RETRY_AFTER, "17".parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(17));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        h.insert(RETRY_AFTER, later.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(30));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        h.insert(RETRY_AFTER, past.parse().unwrap());
        assert_eq!(retry_after(&h, now), Some(0));
        h.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h, now), None);
    }

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(parse_http_url("ftp://x/").is_err());
        assert!(parse_http_url("/relative").is_err());
        assert!(parse_http_url("file:///etc/passwd").is_err());
        assert!(parse_http_url("http://").is_err());
        assert!(parse_http_url("mailto:a@b").is_err());
        let url = parse_http_url("https://user:pw@hooks.example:8443/in?token=abc").unwrap();
        let shown = redacted_url(&url);
        assert_eq!(shown, "https://hooks.example:8443/in?<redacted>");
        assert_eq!(
            scrub("a TOKEN b TOKEN".into(), "TOKEN"),
            "a <redacted> b <redacted>"
        );
        assert_eq!(scrub("nothing".into(), ""), "nothing");
    }
}
