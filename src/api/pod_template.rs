//! `DeliveryTier.spec.podTemplate`: the pod settings a user may add to the
//! agent pods the operator builds (scheduling, pull secrets, security
//! context, extra env and volumes), and the same shape as the operator's
//! defaults for every tier (the chart's `operator.agent.podDefaults`).
//!
//! Owns the subset and its rules. The nested Kubernetes structs are
//! k8s-openapi's own types, so their schema is the one Kubernetes
//! publishes. What the settings may not touch — herald's container, its
//! ports and probes, its volumes and mounts, its labels — is either absent
//! from the type or refused by a CEL rule here (the API server and
//! `herald validate` both apply them); the operator merges the settings
//! (`operator::pod_settings`) and checks what needs the rest of the tier.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvVar, LocalObjectReference, PodSecurityContext, SecurityContext, Toleration,
    TopologySpreadConstraint, Volume, VolumeMount,
};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Label keys herald sets on agent pods (its selectors and track). A
/// settings label with one of these keys is refused.
pub const RESERVED_LABELS: [&str; 6] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "herald.dev/tier",
    "herald.dev/track",
];

/// Annotation keys herald sets on agent pods.
pub const RESERVED_ANNOTATIONS: [&str; 1] = ["herald.dev/pod-revision"];

/// Volume names herald uses in agent pods.
pub const RESERVED_VOLUMES: [&str; 4] = ["config", "tmp", "queue", "spool"];

/// Directories herald mounts in the agent container; nothing may be
/// mounted at or below them.
pub const RESERVED_MOUNT_DIRS: [&str; 2] = ["/etc/herald", "/tmp"];

/// Prefix of the environment variables herald sets (pod identity, track,
/// Secret keys, log format).
pub const RESERVED_ENV_PREFIX: &str = "HERALD_";

/// The fields whose values are Kubernetes' own types: the type's name and
/// where `kubectl explain` shows its fields. The reference names the type
/// rather than repeating Kubernetes' documentation.
pub const KUBERNETES_FIELDS: [(&str, &str, &str); 9] = [
    (
        "imagePullSecrets",
        "LocalObjectReference",
        "pod.spec.imagePullSecrets",
    ),
    ("tolerations", "Toleration", "pod.spec.tolerations"),
    ("affinity", "Affinity", "pod.spec.affinity"),
    (
        "topologySpreadConstraints",
        "TopologySpreadConstraint",
        "pod.spec.topologySpreadConstraints",
    ),
    (
        "securityContext",
        "PodSecurityContext",
        "pod.spec.securityContext",
    ),
    (
        "containerSecurityContext",
        "SecurityContext",
        "pod.spec.containers.securityContext",
    ),
    ("env", "EnvVar", "pod.spec.containers.env"),
    ("volumes", "Volume", "pod.spec.volumes"),
    (
        "volumeMounts",
        "VolumeMount",
        "pod.spec.containers.volumeMounts",
    ),
];

/// The Kubernetes type at a field path (`….podTemplate.<field>`), with
/// where `kubectl explain` shows it; `None` for herald's own fields.
pub fn kubernetes_field(path: &str) -> Option<(&'static str, &'static str)> {
    let (_, field) = path.rsplit_once(".podTemplate.")?;
    KUBERNETES_FIELDS
        .iter()
        .find(|(name, _, _)| *name == field)
        .map(|(_, ty, explain)| (*ty, *explain))
}

/// Whether a field path lies inside one of the Kubernetes types.
pub fn inside_kubernetes_field(path: &str) -> bool {
    let Some((_, rest)) = path.rsplit_once(".podTemplate.") else {
        return false;
    };
    let field = rest.split(['.', '[']).next().unwrap_or(rest);
    field != rest && KUBERNETES_FIELDS.iter().any(|(name, _, _)| *name == field)
}

/// Settings merged into the agent pods. Unset fields leave the operator's
/// defaults; a set field replaces them (labels, annotations, env, volumes
/// and mounts merge by key, name or path; security contexts field by field).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.env) || self.env.all(e, !e.name.startsWith('HERALD_'))")
        .message("env must not set variables starting with HERALD_: herald sets those (pod identity, track, Secret keys)").field_path(".env").reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(self.volumes) || self.volumes.all(v, !(v.name in ['config', 'tmp', 'queue', 'spool']))")
        .message("volumes must not be named config, tmp, queue or spool: herald's own volumes have those names").field_path(".volumes").reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(self.volumeMounts) || self.volumeMounts.all(m, m.mountPath != '/etc/herald' && !m.mountPath.startsWith('/etc/herald/') && m.mountPath != '/tmp' && !m.mountPath.startsWith('/tmp/'))")
        .message("volumeMounts must not mount at or below /etc/herald or /tmp, which herald mounts").field_path(".volumeMounts").reason(Reason::FieldValueForbidden),
)]
pub struct PodTemplate {
    /// Labels and annotations added to the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<PodTemplateMetadata>,
    /// Secrets for pulling the agent image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,
    /// Nodes the agent pods may run on, by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the agent pods tolerate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub tolerations: Option<Vec<Toleration>>,
    /// Node and pod (anti-)affinity of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// How the agent pods spread over zones or nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 8))]
    pub topology_spread_constraints: Option<Vec<TopologySpreadConstraint>>,
    /// PriorityClass of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub priority_class_name: Option<String>,
    /// The pod's security context, merged field by field over herald's
    /// (runAsNonRoot, seccomp RuntimeDefault; no fixed user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    /// The agent container's security context, merged field by field over
    /// herald's (non-root, read-only root filesystem, no privilege
    /// escalation, all capabilities dropped, seccomp RuntimeDefault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_security_context: Option<SecurityContext>,
    /// Extra environment variables of the agent container (not `HERALD_*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub env: Option<Vec<EnvVar>>,
    /// Extra volumes of the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub volumes: Option<Vec<Volume>>,
    /// Extra mounts in the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub volume_mounts: Option<Vec<VolumeMount>>,
}

/// Labels and annotations for the agent pods.
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.labels) || !(\
        'app.kubernetes.io/name' in self.labels || 'app.kubernetes.io/instance' in self.labels || \
        'app.kubernetes.io/managed-by' in self.labels || 'app.kubernetes.io/component' in self.labels || \
        'herald.dev/tier' in self.labels || 'herald.dev/track' in self.labels)")
        .message("labels must not set herald's own keys (app.kubernetes.io/name, instance, managed-by, component; herald.dev/tier, herald.dev/track): the agent's selectors use them").field_path(".labels").reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(self.annotations) || !('herald.dev/pod-revision' in self.annotations)")
        .message("annotations must not set herald.dev/pod-revision, which herald sets").field_path(".annotations").reason(Reason::FieldValueForbidden),
)]
pub struct PodTemplateMetadata {
    /// Labels added to the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: Option<BTreeMap<String, String>>,
    /// Annotations added to the agent pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// One setting that herald refuses, with the field path (below the
/// settings' own root) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub why: String,
}

impl PodTemplate {
    /// Every setting herald refuses in these settings alone, the same
    /// rules the CEL rules above state, for settings no API server checked
    /// (the operator's defaults, or a tier written under an older CRD).
    pub fn refusals(&self) -> Vec<Refusal> {
        let mut out = Vec::new();
        let mut refuse = |field: String, why: String| out.push(Refusal { field, why });
        if let Some(m) = &self.metadata {
            for key in m.labels.iter().flat_map(|l| l.keys()) {
                if RESERVED_LABELS.contains(&key.as_str()) {
                    refuse(
                        "metadata.labels".to_owned(),
                        format!("{key} is herald's own label: the agent's selectors use it"),
                    );
                }
            }
            for key in m.annotations.iter().flat_map(|a| a.keys()) {
                if RESERVED_ANNOTATIONS.contains(&key.as_str()) {
                    refuse(
                        "metadata.annotations".to_owned(),
                        format!("{key} is set by herald"),
                    );
                }
            }
        }
        for (i, e) in self.env.iter().flatten().enumerate() {
            if e.name.starts_with(RESERVED_ENV_PREFIX) {
                refuse(
                    format!("env[{i}].name"),
                    format!("{} starts with HERALD_, which herald sets", e.name),
                );
            }
        }
        for (i, v) in self.volumes.iter().flatten().enumerate() {
            if RESERVED_VOLUMES.contains(&v.name.as_str()) {
                refuse(
                    format!("volumes[{i}].name"),
                    format!("{} is the name of one of herald's own volumes", v.name),
                );
            }
        }
        for (i, m) in self.volume_mounts.iter().flatten().enumerate() {
            if let Some(dir) = RESERVED_MOUNT_DIRS
                .iter()
                .find(|d| at_or_below(&m.mount_path, d))
            {
                refuse(
                    format!("volumeMounts[{i}].mountPath"),
                    format!("{} is at or below {dir}, which herald mounts", m.mount_path),
                );
            }
        }
        out
    }
}

/// Whether `path` is `dir` or inside it.
pub fn at_or_below(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{dir}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(v: serde_json::Value) -> PodTemplate {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn reserved_keys_names_and_paths_are_refused_with_their_field() {
        let s = settings(serde_json::json!({
            "metadata": {
                "labels": {"team": "a", "herald.dev/tier": "x"},
                "annotations": {"herald.dev/pod-revision": "1", "note": "ok"},
            },
            "env": [{"name": "RUST_LOG", "value": "debug"}, {"name": "HERALD_TRACK", "value": "x"}],
            "volumes": [{"name": "ca", "emptyDir": {}}, {"name": "config", "emptyDir": {}}],
            "volumeMounts": [
                {"name": "ca", "mountPath": "/etc/ssl/extra"},
                {"name": "ca", "mountPath": "/etc/herald/x"},
                {"name": "ca", "mountPath": "/tmpfiles"},
            ],
        }));
        let fields: Vec<String> = s.refusals().into_iter().map(|r| r.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.labels",
                "metadata.annotations",
                "env[1].name",
                "volumes[1].name",
                "volumeMounts[1].mountPath",
            ]
        );
        assert!(PodTemplate::default().refusals().is_empty());
    }

    #[test]
    fn the_crd_rules_name_every_reserved_key() {
        let crd = serde_json::to_string(&crate::api::crd::crd_for("DeliveryTier")).unwrap();
        for key in RESERVED_LABELS
            .iter()
            .chain(RESERVED_ANNOTATIONS.iter())
            .chain(RESERVED_VOLUMES.iter())
            .chain(RESERVED_MOUNT_DIRS.iter())
        {
            assert!(crd.contains(&format!("'{key}'")), "{key} has no CEL rule");
        }
        assert!(crd.contains(&format!("startsWith('{RESERVED_ENV_PREFIX}')")));
    }
}
