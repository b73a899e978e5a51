//! In a cluster the operator writes the agent's config into a ConfigMap.
//! The kubelet refreshes a mounted ConfigMap only every minute or so, so the
//! agent also watches the object through the API (its Role allows get, list
//! and watch on that one name) and applies a change within about a second.
//!
//! Owns: the watch and the "did the text change" filter. Leaves to others:
//! parsing and applying (the caller's `on_change`, the same path a file
//! reload takes), and retries (the watcher's backoff; a failing API never
//! stops the agent, whose current config keeps running).

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

/// Watches ConfigMap `name` and calls `on_change` with the value of `key`
/// whenever it differs from the last value seen (first: the current one).
/// Returns when `stop` turns true.
pub async fn watch_key(
    api: Api<ConfigMap>,
    name: String,
    key: String,
    mut stop: watch::Receiver<bool>,
    mut on_change: impl FnMut(String) + Send,
) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut last: Option<String> = None;
    loop {
        let event = tokio::select! {
            e = events.next() => e,
            _ = stop.changed() => return,
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                let Some(text) = value_of(cm.data, &key) else {
                    tracing::warn!(config_map = %name, %key, "the ConfigMap has no such key; keeping the current config");
                    continue;
                };
                if last.as_deref() != Some(text.as_str()) {
                    last = Some(text.clone());
                    on_change(text);
                }
            }
            Some(Ok(watcher::Event::Delete(_))) => {
                tracing::warn!(config_map = %name, "the ConfigMap was deleted; keeping the current config");
            }
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
            Some(Err(e)) => {
                tracing::warn!(config_map = %name, error = %e, "watching the ConfigMap failed; retrying with backoff");
            }
        }
    }
}

fn value_of(data: Option<BTreeMap<String, String>>, key: &str) -> Option<String> {
    data?.remove(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    use serde_json::{Value, json};
    use tokio::sync::mpsc;

    type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

    fn cm(version: &str, text: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "tier-a-config", "namespace": "ns", "resourceVersion": version},
            "data": {"config.yaml": text}
        })
    }

    fn full(v: Value) -> Body {
        http_body_util::Full::new(Bytes::from(v.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync()
    }

    /// A mocked API server: the list answers with the first version; every
    /// watch streams the lines the test sends. Requests are recorded.
    fn api(
        lines: Arc<Mutex<Option<mpsc::UnboundedReceiver<Value>>>>,
        seen: Arc<Mutex<Vec<String>>>,
    ) -> kube::Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let lines = lines.clone();
            let seen = seen.clone();
            async move {
                let uri = req.uri().to_string();
                seen.lock().unwrap().push(uri.clone());
                let body = if uri.contains("watch=true") {
                    match lines.lock().unwrap().take() {
                        Some(rx) => {
                            let frames = futures::stream::unfold(rx, |mut rx| async move {
                                let v = rx.recv().await?;
                                let line = format!("{v}\n");
                                Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), rx))
                            });
                            StreamBody::new(frames).boxed_unsync()
                        }
                        // A second watch: hold it open without events.
                        None => StreamBody::new(futures::stream::pending()).boxed_unsync(),
                    }
                } else {
                    full(json!({
                        "apiVersion": "v1", "kind": "ConfigMapList",
                        "metadata": {"resourceVersion": "1"},
                        "items": [cm("1", "first")]
                    }))
                };
                Ok::<_, Infallible>(http::Response::new(body))
            }
        });
        kube::Client::new(service, "ns")
    }

    async fn next(changes: &mut mpsc::UnboundedReceiver<String>) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(10), changes.recv())
            .await
            .ok()
            .flatten()
    }

    #[tokio::test]
    async fn applies_the_current_value_then_each_change_once() {
        let (tx, rx) = mpsc::unbounded_channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client = api(Arc::new(Mutex::new(Some(rx))), seen.clone());
        let (stop_tx, stop_rx) = watch::channel(false);
        let (changes_tx, mut changes) = mpsc::unbounded_channel();
        let task = tokio::spawn(watch_key(
            Api::namespaced(client, "ns"),
            "tier-a-config".into(),
            "config.yaml".into(),
            stop_rx,
            move |text| {
                let _ = changes_tx.send(text);
            },
        ));
        assert_eq!(next(&mut changes).await.as_deref(), Some("first"));

        // The same text again (a metadata-only change) is not a change.
        tx.send(json!({"type": "MODIFIED", "object": cm("2", "first")}))
            .unwrap();
        tx.send(json!({"type": "MODIFIED", "object": cm("3", "second")}))
            .unwrap();
        assert_eq!(next(&mut changes).await.as_deref(), Some("second"));
        // A deletion keeps the config; a later re-creation applies.
        tx.send(json!({"type": "DELETED", "object": cm("4", "second")}))
            .unwrap();
        tx.send(json!({"type": "ADDED", "object": cm("5", "third")}))
            .unwrap();
        assert_eq!(next(&mut changes).await.as_deref(), Some("third"));

        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
        assert!(changes.try_recv().is_err(), "no change was applied twice");
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter()
                .all(|u| u.contains("fieldSelector=metadata.name%3Dtier-a-config")),
            "every request names the one ConfigMap (RBAC allows no other): {seen:?}"
        );
    }
}
