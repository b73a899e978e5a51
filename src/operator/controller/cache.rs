//! What the operator's caches keep of the children they watch.
//!
//! Owns trimming each watched object before it is cached. A typed
//! Deployment costs about 33 KB of heap for 3.7 KB of JSON, most of it the
//! pod template's containers and volumes and the managedFields; at 1,000
//! tiers those caches were 48 MiB of the operator's 80 MiB. A pass reads
//! of a cached Deployment only its metadata (owner references, the
//! rollout-state and restart annotations), its replica counts and status,
//! and its template's annotations (the pod revision) — never the pod spec,
//! which a rollout reads straight from the API when it pins the stable
//! track ([`stable_template`]). Nothing reads managedFields, of any kind
//! (tiers, policies, Secrets' metadata, pods): every watch drops them.
//!
//! Lists come in pages of [`LIST_PAGE`]: a page is held fully typed
//! before the trimming, and the allocator keeps what the largest page took.
//!
//! Invariant: what is dropped here is never read from a cache.
//!
//! Also where every watch and list looks: the watched namespace, or all
//! ([`api_for`]).

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::api::Api;
use kube::runtime::watcher;
use kube::{Client, Resource};

use crate::operator::error::Result;

/// Objects per list page of every watch. kube's default of 500 full
/// Deployments is about 16 MiB of heap before trimming; 100 costs a few
/// more list calls at start and a fifth of that.
pub(crate) const LIST_PAGE: u32 = 100;

/// How every watch of the operator lists and watches.
pub(crate) fn watch_config() -> watcher::Config {
    watcher::Config::default()
        .any_semantic()
        .page_size(LIST_PAGE)
}

/// Drops the managedFields, which no pass reads.
pub(crate) fn slim<K: Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

/// [`slim`], and the pod spec of the template (its metadata stays).
pub(crate) fn slim_deployment(d: &mut Deployment) {
    slim(d);
    if let Some(spec) = d.spec.as_mut() {
        spec.template.spec = None;
    }
}

/// The stable Deployment's whole pod template, read from the API: the
/// cache keeps only its metadata. `None` when the Deployment is gone.
pub(crate) async fn stable_template(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<Option<PodTemplateSpec>> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|d| d.spec.map(|s| s.template)))
}

/// The API of `K` in the watched namespace, or in all of them.
pub(super) fn api_for<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentSpec;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    #[test]
    fn a_cached_deployment_keeps_what_passes_read() {
        let mut d = Deployment {
            metadata: ObjectMeta {
                name: Some("t".into()),
                annotations: Some([("a".to_owned(), "1".to_owned())].into()),
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        annotations: Some([("rev".to_owned(), "r1".to_owned())].into()),
                        ..Default::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![Container::default()],
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        };
        slim_deployment(&mut d);
        assert_eq!(d.metadata.managed_fields, None);
        assert_eq!(d.metadata.annotations.as_ref().unwrap()["a"], "1");
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.template.spec, None);
        assert_eq!(
            spec.template.metadata.unwrap().annotations.unwrap()["rev"],
            "r1"
        );
    }
}
