//! A tier's agent HTTP API reached through the Kubernetes API server's
//! service proxy, for `herald status|dlq|breaker|degrade --tier`: no
//! port-forward, only the user's kubeconfig and RBAC (`get` on
//! `services/proxy`).
//!
//! Owns the proxy path (a pure function of namespace, tier and the agent
//! path) and sending one request along it. The Service is the one the
//! operator creates for the tier, so the request reaches one agent of
//! either track, as a port-forward to the Service would.
//!
//! The API server authenticates the caller with the `Authorization`
//! header and removes it before proxying, so the agent's admin token
//! travels in `X-Herald-Admin-Token` instead (marked sensitive, so kube's
//! tracing does not print it).

use http::{Method, Request, StatusCode};
use kube::Client;

use super::names;
use crate::api::agent::ADMIN_TOKEN_HEADER;

/// Why the request did not get an answer from the API server.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{what} {name:?} cannot name a Kubernetes object: {why}")]
    BadName {
        what: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("the Kubernetes API: {0}")]
    Api(#[from] kube::Error),
    /// The token is not repeated: it is a secret.
    #[error("the admin token is not a valid HTTP header value")]
    AdminToken,
}

/// What came back: the agent's answer, or the API server's own when it
/// could not reach one (e.g. 503 without ready agents).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: StatusCode,
    pub body: String,
}

/// `/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy{path}`
/// for the agent path `path` (with its query), which starts with `/`.
pub fn proxy_path(namespace: &str, tier: &str, path: &str) -> Result<String, ProxyError> {
    // Both go into the URL path unescaped; a '/' or '?' would reach
    // another object, so anything but a DNS label is refused.
    names::check_tier_name(tier).map_err(|why| ProxyError::BadName {
        what: "tier",
        name: tier.to_owned(),
        why,
    })?;
    check_namespace(namespace)?;
    Ok(format!(
        "/api/v1/namespaces/{namespace}/services/{}:{}/proxy{path}",
        names::service_name(tier),
        names::SERVICE_PORT_NAME
    ))
}

fn check_namespace(namespace: &str) -> Result<(), ProxyError> {
    let bad = |why| ProxyError::BadName {
        what: "namespace",
        name: namespace.to_owned(),
        why,
    };
    let b = namespace.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Err(bad("must be 1 to 63 characters"));
    }
    if !b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    {
        return Err(bad("may contain only lowercase letters, digits and '-'"));
    }
    Ok(())
}

/// Send one request to `tier`'s agents; any HTTP status is an answer.
pub async fn send(
    client: &Client,
    namespace: &str,
    tier: &str,
    method: Method,
    path: &str,
    json_body: Option<Vec<u8>>,
    admin_token: Option<&str>,
) -> Result<Answer, ProxyError> {
    let uri = proxy_path(namespace, tier, path)?;
    let mut request = Request::builder().method(method).uri(uri);
    if json_body.is_some() {
        request = request.header(http::header::CONTENT_TYPE, "application/json");
    }
    // The API server keeps `Authorization` for its own login and does not
    // pass it on; the agent takes its admin token in this header too.
    if let Some(token) = admin_token {
        let mut value = http::HeaderValue::from_str(token).map_err(|_| ProxyError::AdminToken)?;
        value.set_sensitive(true);
        request = request.header(ADMIN_TOKEN_HEADER, value);
    }
    let request = request.body(kube::client::Body::from(json_body.unwrap_or_default()))?;
    let response = client.send(request).await?;
    let status = response.status();
    let bytes = response.into_body().collect_bytes().await?;
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Method, URI, body and admin-token header of each request seen.
    type Seen = Arc<Mutex<Vec<(String, String, String, Option<String>)>>>;

    /// A client whose "API server" records each request and answers 200
    /// with `{"ok": true}`.
    fn recording() -> (Client, Seen) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: Request<kube::client::Body>| {
            let log = log.clone();
            async move {
                let method = req.method().to_string();
                let uri = req.uri().to_string();
                let token = req
                    .headers()
                    .get(ADMIN_TOKEN_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = req.into_body().collect_bytes().await.unwrap_or_default();
                log.lock().unwrap().push((
                    method,
                    uri,
                    String::from_utf8_lossy(&body).into_owned(),
                    token,
                ));
                Ok::<_, std::convert::Infallible>(
                    http::Response::builder()
                        .status(200)
                        .body(kube::client::Body::from(b"{\"ok\":true}".to_vec()))
                        .unwrap(),
                )
            }
        });
        (Client::new(svc, "default"), seen)
    }

    #[test]
    fn the_path_names_the_tiers_service_and_port() {
        assert_eq!(
            proxy_path("bots", "telegram", "/healthz/details").unwrap(),
            "/api/v1/namespaces/bots/services/telegram:http/proxy/healthz/details"
        );
        for (ns, tier) in [("bots", "a/b"), ("bots", "x?y"), ("a/b", "t"), ("", "t")] {
            assert!(proxy_path(ns, tier, "/healthz").is_err(), "{ns} {tier}");
        }
    }

    #[tokio::test]
    async fn a_request_goes_to_the_proxy_path_with_its_query_and_body() {
        let (client, seen) = recording();
        let a = send(
            &client,
            "bots",
            "telegram",
            Method::POST,
            "/admin/dlq/retry?x=1",
            Some(b"{\"all\":true}".to_vec()),
            Some("admin-SECRET"),
        )
        .await
        .unwrap();
        assert_eq!(a.status, StatusCode::OK);
        assert_eq!(a.body, "{\"ok\":true}");
        let seen = seen.lock().unwrap();
        assert_eq!(
            seen[0],
            (
                "POST".to_owned(),
                "/api/v1/namespaces/bots/services/telegram:http/proxy/admin/dlq/retry?x=1"
                    .to_owned(),
                "{\"all\":true}".to_owned(),
                Some("admin-SECRET".to_owned()),
            )
        );
    }
}
