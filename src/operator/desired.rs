//! The child objects of a DeliveryTier, as a pure function of the tier, what
//! it references (its policies, and the other tiers its agents deliver
//! through with theirs — see [`reach`](super::reach)), the operator's
//! options and (during a canary) the two tracks' plan.
//!
//! Owns every field herald sets on its children (what runs inside the pod
//! comes from [`pod`](super::pod)); the shell applies them with
//! server-side apply under one manager ([`MANAGER`](super::names::MANAGER)),
//! so a field left `None` here is a field herald does not own. Decisions
//! taken here:
//!
//! - **Two revisions.** `config_revision` hashes the ConfigMap (Agent
//!   document + the tier + the tiers it delivers through + their policies);
//!   agents hot-reload it, so it is written on the ConfigMap only.
//!   `pod_revision` hashes what the pods run — the pod spec (image, pull
//!   policy, resources, env and secret wiring, volumes), the store
//!   settings, and the versions of every Secret the pods read from env,
//!   fallback tiers' included (env is read at start, so a rotated token
//!   must restart pods) — and is the pod template's
//!   [`ANNOTATION_POD_REVISION`](super::names::ANNOTATION_POD_REVISION).
//!   A policy edit (or a fallback tier's) changes the first only; an image
//!   edit changes both. `replicas` is not in the pod revision: scaling does
//!   not roll pods.
//! - **Replicas.** herald owns `spec.replicas` of both Deployments, from
//!   `spec.replicas` and the canary plan. An HPA on the agent Deployment
//!   would fight the apply; an HPA scales the tier instead, through its
//!   scale subresource (`status.replicas`, `status.selector`).
//! - **Pod settings.** The operator's defaults and the tier's
//!   `spec.podTemplate` are merged ([`pod_settings`](super::pod_settings))
//!   into both tracks' pods; their labels and annotations are part of the
//!   pod revision, so changing them goes through a rollout like any
//!   other pod change.
//! - **PodDisruptionBudget.** `maxUnavailable: 1` over both tracks, with
//!   `unhealthyPodEvictionPolicy: AlwaysAllow`. `minAvailable: replicas-1`
//!   would need recomputing on every scale and, at one replica, becomes
//!   `minAvailable: 1`, which blocks every node drain; `maxUnavailable: 1`
//!   is right at any size. AlwaysAllow lets a pod that is not ready be
//!   evicted (by a drain or by healing) even when the budget is spent — it
//!   serves nothing anyway.
//! - **Storage.** An embedded queue must survive the pod (healing deletes
//!   pods), so it lives on a claim `<tier>-queue`; a spool directory on
//!   `<tier>-spool`. A Deployment mounting a ReadWriteOnce claim uses the
//!   `Recreate` strategy (one writer; a surge pod on another node could not
//!   attach the volume); others roll one extra pod at a time. Claims are
//!   never listed for deletion: they may hold undelivered messages.
//! - **Other tiers.** The ConfigMap holds every tier the agents can
//!   deliver through (fallbacks and degradation routes, transitively) with
//!   their policies, and the pods carry those tiers' channel Secrets, so
//!   failover works inside one agent. A loop among their fallbacks is
//!   refused ([`DesiredError::FallbackCycle`]) rather than rendered for an
//!   agent that would refuse it.
//! - **Canary.** With `spec.rollout`, a canary Deployment `<tier>-canary`
//!   always exists (zero replicas at rest) and runs the desired template.
//!   While a rollout is underway the caller pins the stable Deployment to
//!   the template it runs now ([`Tracks::stable_template`]).
//!
//! Invariants: every object has apiVersion/kind (k8s-openapi writes them),
//! name, namespace, the common labels and one controller owner reference to
//! the tier; no secret value appears anywhere — Secrets reach pods only as
//! `secretKeyRef` env, one variable per Secret key, named as the agent
//! looks it up ([`agent_config::secret_env`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    ConfigMap, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodTemplateSpec, Service,
    ServiceAccount, ServicePort, ServiceSpec, VolumeResourceRequirements,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use crate::api::delivery_tier::StoreKind;
use crate::api::{DeliveryTier, DeliveryTierSpec};

use super::agent_config::{self, CONFIG_KEY, ConfigInput, secret_env, secret_uses};
use super::inputs::{DesiredError, OperatorOptions, ResolvedPolicies, Tracks};
use super::names::{self, Track};
use super::pod::{Volumes, claim_name, plan_volumes, pod_revision, pod_spec};
use super::pod_settings;
use super::reach;

/// A kind of child object, for the deletion list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    Deployment,
}

/// Everything herald applies for one tier.
#[derive(Clone, Debug, PartialEq)]
pub struct DesiredObjects {
    pub config_map: ConfigMap,
    /// `<tier>-agent`.
    pub stable: Deployment,
    /// `<tier>-canary`, when the tier has a rollout.
    pub canary: Option<Deployment>,
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    pub service_account: ServiceAccount,
    pub role: Role,
    pub role_binding: RoleBinding,
    /// Queue and/or spool claims.
    pub claims: Vec<PersistentVolumeClaim>,
    /// Objects herald may have created earlier that must go now (the canary
    /// Deployment after `spec.rollout` is removed).
    pub delete: Vec<(ChildKind, String)>,
    /// Hash of the ConfigMap's config file.
    pub config_revision: String,
    /// Hash of what the pods run.
    pub pod_revision: String,
}

/// The tier's objects at rest (no rollout underway).
pub fn desired_objects(
    tier: &DeliveryTier,
    policies: &ResolvedPolicies,
    opts: &OperatorOptions,
) -> Result<DesiredObjects, DesiredError> {
    desired_objects_with(tier, policies, opts, &Tracks::default())
}

/// The tier's objects with the tracks planned by the rollout.
pub fn desired_objects_with(
    tier: &DeliveryTier,
    policies: &ResolvedPolicies,
    opts: &OperatorOptions,
    tracks: &Tracks,
) -> Result<DesiredObjects, DesiredError> {
    let name = tier
        .metadata
        .name
        .as_deref()
        .ok_or(DesiredError::NoMetadata("metadata.name"))?;
    names::check_tier_name(name).map_err(|why| DesiredError::InvalidName {
        name: name.to_owned(),
        why,
    })?;
    let ns = tier
        .metadata
        .namespace
        .as_deref()
        .ok_or(DesiredError::NoMetadata("metadata.namespace"))?;
    let owner = owner_reference(tier)?;
    let spec = &tier.spec;
    check_store(spec)?;
    let volumes = plan_volumes(spec, opts)?;

    let reach = reach::complete(name, spec, policies)?;
    let secrets = secret_env(&secret_uses(spec, &reach.tiers))?;

    let canary_weight = tracks.canary.map_or(0, |c| c.weight);
    let config = agent_config::render(&ConfigInput {
        tier_name: name,
        namespace: ns,
        spec,
        reach: &reach,
        canary_weight,
    })?;

    let m = Meta { name, ns, owner };
    pod_settings::check_tier(spec.pod_template.as_ref())?;
    let settings = pod_settings::merge(&opts.pod_defaults, spec.pod_template.as_ref());
    let pod_spec = pod_spec(name, spec, opts, &volumes, &secrets, &settings)?;
    let pod_revision = pod_revision(&pod_spec, &settings, spec, &secrets, policies)?;
    let template = |track| {
        let mut t = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(names::pod_labels(name, track)),
                annotations: Some(BTreeMap::from([(
                    names::ANNOTATION_POD_REVISION.to_owned(),
                    pod_revision.clone(),
                )])),
                ..ObjectMeta::default()
            }),
            spec: Some(pod_spec.clone()),
        };
        pod_settings::apply_metadata(&mut t, &settings);
        t
    };

    let stable_template = tracks
        .stable_template
        .clone()
        .unwrap_or_else(|| template(Track::Stable));
    let stable = deployment(&m, Track::Stable, stable_template, spec.replicas, &volumes);
    let (canary, delete) = if spec.rollout.is_some() {
        let replicas = tracks.canary.map_or(0, |c| c.replicas);
        let d = deployment(
            &m,
            Track::Canary,
            template(Track::Canary),
            replicas,
            &volumes,
        );
        (Some(d), Vec::new())
    } else {
        let gone = names::deployment_name(name, Track::Canary);
        (None, vec![(ChildKind::Deployment, gone)])
    };

    Ok(DesiredObjects {
        config_map: config_map(&m, &config.yaml, &config.revision),
        stable,
        canary,
        service: service(&m),
        pdb: pdb(&m),
        service_account: service_account(&m),
        role: role(&m),
        role_binding: role_binding(&m),
        claims: claims(&m, &volumes, opts),
        delete,
        config_revision: config.revision,
        pod_revision,
    })
}

impl DesiredObjects {
    /// Every object's `(kind, name)`, in apply order (configuration and
    /// identity before the workloads that use them).
    pub fn names(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("ServiceAccount", name_of(&self.service_account.metadata)),
            ("Role", name_of(&self.role.metadata)),
            ("RoleBinding", name_of(&self.role_binding.metadata)),
            ("ConfigMap", name_of(&self.config_map.metadata)),
        ];
        out.extend(
            self.claims
                .iter()
                .map(|c| ("PersistentVolumeClaim", name_of(&c.metadata))),
        );
        out.push(("Deployment", name_of(&self.stable.metadata)));
        if let Some(c) = &self.canary {
            out.push(("Deployment", name_of(&c.metadata)));
        }
        out.push(("Service", name_of(&self.service.metadata)));
        out.push(("PodDisruptionBudget", name_of(&self.pdb.metadata)));
        out
    }

    /// Every object's metadata, in the order of [`names`](Self::names).
    pub fn metadata(&self) -> Vec<&ObjectMeta> {
        let mut out = vec![
            &self.service_account.metadata,
            &self.role.metadata,
            &self.role_binding.metadata,
            &self.config_map.metadata,
        ];
        out.extend(self.claims.iter().map(|c| &c.metadata));
        out.push(&self.stable.metadata);
        if let Some(c) = &self.canary {
            out.push(&c.metadata);
        }
        out.push(&self.service.metadata);
        out.push(&self.pdb.metadata);
        out
    }
}

fn name_of(m: &ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

/// The tier as controlling owner: deleting the tier deletes its children,
/// and foreground deletion waits for them.
fn owner_reference(tier: &DeliveryTier) -> Result<OwnerReference, DesiredError> {
    let uid = tier
        .metadata
        .uid
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or(DesiredError::NoUid)?;
    Ok(OwnerReference {
        api_version: DeliveryTier::api_version(&()).into_owned(),
        kind: DeliveryTier::kind(&()).into_owned(),
        name: tier.metadata.name.clone().unwrap_or_default(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The CRD's CEL rules already forbid these; a tier that slipped past them
/// (an older CRD) must not get two writers on one embedded queue.
fn check_store(spec: &DeliveryTierSpec) -> Result<(), DesiredError> {
    if spec.store.kind == StoreKind::Embedded && (spec.replicas > 1 || spec.rollout.is_some()) {
        return Err(DesiredError::InvalidSpec {
            field: "spec.store.type",
            why: "replicas > 1 or a rollout requires store.type redis: agents must share one queue",
        });
    }
    if spec.store.kind == StoreKind::Redis && spec.store.redis.is_none() {
        return Err(DesiredError::InvalidSpec {
            field: "spec.store.redis",
            why: "store.type redis requires store.redis",
        });
    }
    Ok(())
}

struct Meta<'a> {
    name: &'a str,
    ns: &'a str,
    owner: OwnerReference,
}

impl Meta<'_> {
    fn object(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.ns.to_owned()),
            labels: Some(names::common_labels(self.name)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

fn deployment(
    m: &Meta<'_>,
    track: Track,
    template: PodTemplateSpec,
    replicas: u32,
    volumes: &Volumes,
) -> Deployment {
    let strategy = if volumes.needs_recreate() {
        DeploymentStrategy {
            type_: Some("Recreate".to_owned()),
            rolling_update: None,
        }
    } else {
        DeploymentStrategy {
            type_: Some("RollingUpdate".to_owned()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }
    };
    Deployment {
        metadata: m.object(names::deployment_name(m.name, track)),
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(names::track_selector(m.name, track)),
                match_expressions: None,
            },
            strategy: Some(strategy),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The claims behind the volumes, owned by the tier: deleting the tier
/// deletes them, nothing else does.
fn claims(m: &Meta<'_>, volumes: &Volumes, opts: &OperatorOptions) -> Vec<PersistentVolumeClaim> {
    volumes
        .claims
        .iter()
        .map(|c| PersistentVolumeClaim {
            metadata: m.object(claim_name(m.name, c.volume)),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![c.access_mode.clone()]),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_owned(), c.size.clone())])),
                    ..VolumeResourceRequirements::default()
                }),
                storage_class_name: opts.storage_class.clone(),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: None,
        })
        .collect()
}

fn config_map(m: &Meta<'_>, yaml: &str, revision: &str) -> ConfigMap {
    let mut metadata = m.object(names::config_map_name(m.name));
    metadata.annotations = Some(BTreeMap::from([(
        names::ANNOTATION_CONFIG_REVISION.to_owned(),
        revision.to_owned(),
    )]));
    ConfigMap {
        metadata,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_owned(), yaml.to_owned())])),
        ..ConfigMap::default()
    }
}

fn service(m: &Meta<'_>) -> Service {
    Service {
        metadata: m.object(names::service_name(m.name)),
        spec: Some(ServiceSpec {
            selector: Some(names::tier_selector(m.name)),
            ports: Some(vec![ServicePort {
                name: Some(names::SERVICE_PORT_NAME.to_owned()),
                port: i32::from(agent_config::HTTP_PORT),
                target_port: Some(IntOrString::String("http".to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn pdb(m: &Meta<'_>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: m.object(names::pdb_name(m.name)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            min_available: None,
            selector: Some(LabelSelector {
                match_labels: Some(names::tier_selector(m.name)),
                match_expressions: None,
            }),
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".to_owned()),
        }),
        status: None,
    }
}

fn service_account(m: &Meta<'_>) -> ServiceAccount {
    ServiceAccount {
        metadata: m.object(names::agent_account_name(m.name)),
        ..ServiceAccount::default()
    }
}

/// The agent may read and watch its own ConfigMap, nothing else.
fn role(m: &Meta<'_>) -> Role {
    Role {
        metadata: m.object(names::agent_account_name(m.name)),
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".to_owned()]),
            resource_names: Some(vec![names::config_map_name(m.name)]),
            verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
            non_resource_urls: None,
        }]),
    }
}

fn role_binding(m: &Meta<'_>) -> RoleBinding {
    let account = names::agent_account_name(m.name);
    RoleBinding {
        metadata: m.object(account.clone()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: account.clone(),
        },
        subjects: Some(vec![Subject {
            api_group: None,
            kind: "ServiceAccount".to_owned(),
            name: account,
            namespace: Some(m.ns.to_owned()),
        }]),
    }
}

#[cfg(test)]
mod tests;
