//! The agent pod: container, probes, security context, environment,
//! volumes, and the pod revision that hashes them (the user's pod settings
//! merged in by [`pod_settings`](super::pod_settings)).
//!
//! Owns what runs inside an agent pod; `desired` wraps it in Deployments,
//! and [`agent_config`](super::agent_config) decides which Secret keys the
//! agent reads under which variable names.
//! Invariants: the container is identical in both tracks (the track comes
//! from a label through the downward API); Secrets enter only as
//! `secretKeyRef` env; the root filesystem is read-only, so everything the
//! agent writes lives on a mounted volume (`/tmp`, the queue, the spool).

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaimVolumeSource,
    PodSecurityContext, PodSpec, Probe, SeccompProfile, SecretKeySelector, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::DeliveryTierSpec;
use crate::api::delivery_tier::Channel;
use crate::api::pod_template::PodTemplate;
use crate::api::refs::SecretKeyRef;

use super::agent_config::{self, CONFIG_DIR, CONFIG_PATH, embedded_queue_path};
use super::hash::Fnv64;
use super::inputs::{DesiredError, OperatorOptions, ResolvedPolicies};
use super::names;
use super::pod_settings;

/// A claim to create and where pods mount it.
pub(super) struct ClaimMount {
    pub volume: &'static str,
    pub mount_path: String,
    pub access_mode: String,
    pub size: Quantity,
}

pub(super) struct Volumes {
    pub claims: Vec<ClaimMount>,
}

impl Volumes {
    /// A ReadWriteOnce claim admits one node, so pods must not overlap.
    pub fn needs_recreate(&self) -> bool {
        self.claims.iter().any(|c| c.access_mode == "ReadWriteOnce")
    }
}

pub(super) fn plan_volumes(
    spec: &DeliveryTierSpec,
    opts: &OperatorOptions,
) -> Result<Volumes, DesiredError> {
    let mut claims = Vec::new();
    if let Some(path) = embedded_queue_path(spec)? {
        let field = "spec.store.embedded.path";
        check_path(field, &path)?;
        let dir = match path.rsplit_once('/') {
            Some((dir, _)) if !dir.is_empty() => dir.to_owned(),
            _ => {
                return Err(DesiredError::InvalidSpec {
                    field,
                    why: "the queue file must sit in a directory below /",
                });
            }
        };
        claims.push(ClaimMount {
            volume: "queue",
            mount_path: dir,
            access_mode: "ReadWriteOnce".to_owned(),
            size: opts.queue_volume_size.clone(),
        });
    }
    if spec.channel == Channel::Spool {
        let field = "spec.spool.path";
        let path =
            spec.spool
                .as_ref()
                .and_then(|s| s.path.clone())
                .ok_or(DesiredError::InvalidSpec {
                    field,
                    why: "a spool channel requires spool.path",
                })?;
        check_path(field, &path)?;
        if let Some(q) = claims.first()
            && overlaps(&q.mount_path, &path)
        {
            return Err(DesiredError::InvalidSpec {
                field,
                why: "the spool directory overlaps the embedded queue's directory",
            });
        }
        claims.push(ClaimMount {
            volume: "spool",
            mount_path: path.trim_end_matches('/').to_owned(),
            access_mode: opts.spool_access_mode.clone(),
            size: opts.spool_volume_size.clone(),
        });
    }
    Ok(Volumes { claims })
}

/// Absolute, normalised (a trailing `/` is allowed), and clear of the
/// paths herald mounts itself.
fn check_path(field: &'static str, path: &str) -> Result<(), DesiredError> {
    let bad = |why| Err(DesiredError::InvalidSpec { field, why });
    if !path.starts_with('/') {
        return bad("must be an absolute path");
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed
        .split('/')
        .skip(1)
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("must not contain empty, '.' or '..' segments");
    }
    if trimmed.is_empty() {
        return bad("cannot be /");
    }
    for reserved in [CONFIG_DIR, "/tmp"] {
        if overlaps(reserved, trimmed) {
            return bad("must not be inside or above /etc/herald or /tmp, which herald mounts");
        }
    }
    Ok(())
}

/// Whether one directory is the other or contains it.
fn overlaps(a: &str, b: &str) -> bool {
    let inside =
        |x: &str, y: &str| x == y || y.starts_with(&format!("{}/", x.trim_end_matches('/')));
    inside(a, b) || inside(b, a)
}

/// The pod of `tier`; `secrets` are the variables and the Secret keys
/// they carry ([`secret_env`](super::agent_config::secret_env)); `settings`
/// are the user's, merged in by [`pod_settings`](super::pod_settings).
pub(super) fn pod_spec(
    tier: &str,
    spec: &DeliveryTierSpec,
    opts: &OperatorOptions,
    volumes: &Volumes,
    secrets: &[(String, &SecretKeyRef)],
    settings: &PodTemplate,
) -> Result<PodSpec, DesiredError> {
    let field_env = |name: &str, path: String| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path,
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let mut env = vec![
        field_env(agent_config::env::POD_NAME, "metadata.name".to_owned()),
        field_env(
            agent_config::env::POD_NAMESPACE,
            "metadata.namespace".to_owned(),
        ),
        // From the label, so the container is identical in both tracks.
        field_env(
            agent_config::env::TRACK,
            format!("metadata.labels['{}']", names::LABEL_TRACK),
        ),
    ];
    for (var, r) in secrets {
        env.push(EnvVar {
            name: var.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: r.name.clone(),
                    key: r.key.clone(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    for (name, value) in &opts.agent_env {
        env.push(EnvVar {
            name: name.clone(),
            value: Some(value.clone()),
            ..EnvVar::default()
        });
    }

    let mut mounts = vec![
        VolumeMount {
            name: "config".to_owned(),
            mount_path: CONFIG_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
    ];
    let mut pod_volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config_map_name(tier),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
    ];
    for c in &volumes.claims {
        mounts.push(VolumeMount {
            name: c.volume.to_owned(),
            mount_path: c.mount_path.clone(),
            ..VolumeMount::default()
        });
        pod_volumes.push(Volume {
            name: c.volume.to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim_name(tier, c.volume),
                read_only: None,
            }),
            ..Volume::default()
        });
    }

    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    let runtime_default = || SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    };

    let container = Container {
        name: "agent".to_owned(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| opts.default_image.clone()),
        ),
        image_pull_policy: opts.image_pull_policy.clone(),
        args: Some(vec![
            "agent".to_owned(),
            "--config".to_owned(),
            CONFIG_PATH.to_owned(),
        ]),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: i32::from(agent_config::HTTP_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        env: Some(env),
        resources: spec.resources.clone(),
        // Opening an embedded queue can take a while after a crash; the
        // startup probe holds liveness off for up to a minute.
        startup_probe: Some(probe("/healthz", 2, 30)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            seccomp_profile: Some(runtime_default()),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let mut pod = PodSpec {
        containers: vec![container],
        service_account_name: Some(names::agent_account_name(tier)),
        // The agent watches its ConfigMap through the API (hot reload within
        // seconds, where the kubelet's volume refresh takes a minute).
        automount_service_account_token: Some(true),
        // No user or group: the image's numeric USER satisfies
        // runAsNonRoot, and platforms that assign IDs (OpenShift) can.
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            seccomp_profile: Some(runtime_default()),
            ..PodSecurityContext::default()
        }),
        volumes: Some(pod_volumes),
        ..PodSpec::default()
    };
    let operator_env: Vec<String> = opts.agent_env.iter().map(|(k, _)| k.clone()).collect();
    let claims: Vec<(&str, &str)> = volumes
        .claims
        .iter()
        .map(|c| (c.volume, c.mount_path.as_str()))
        .collect();
    pod_settings::apply(&mut pod, settings, &claims, &operator_env)?;
    Ok(pod)
}

pub(super) fn claim_name(tier: &str, volume: &str) -> String {
    if volume == "queue" {
        names::queue_claim_name(tier)
    } else {
        names::spool_claim_name(tier)
    }
}

/// Hash of what the pods run: pod spec, the user's pod labels and
/// annotations, store settings (read at start), and the versions of the
/// Secrets the pods read from env (`secrets`, the same list the pod spec
/// was built from).
pub(super) fn pod_revision(
    pod: &PodSpec,
    settings: &PodTemplate,
    spec: &DeliveryTierSpec,
    secrets: &[(String, &SecretKeyRef)],
    policies: &ResolvedPolicies,
) -> Result<String, DesiredError> {
    let render = |e: serde_json::Error| DesiredError::Render(e.to_string());
    let mut h = Fnv64::default();
    h.write_part(&serde_json::to_vec(pod).map_err(render)?);
    // Only when set, so tiers without settings keep their revision.
    if let Some(m) = &settings.metadata {
        h.write_part(&serde_json::to_vec(m).map_err(render)?);
    }
    h.write_part(&serde_json::to_vec(&spec.store).map_err(render)?);
    for (_, r) in secrets {
        h.write_part(r.name.as_bytes());
        let version = policies
            .secret_versions
            .get(&r.name)
            .map(String::as_str)
            .unwrap_or("");
        h.write_part(version.as_bytes());
    }
    Ok(h.hex())
}
