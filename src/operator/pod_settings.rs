//! The user's settings of agent pods: the operator's defaults (the chart's
//! `operator.agent.podDefaults`) and a tier's `spec.podTemplate`, merged
//! into one [`PodTemplate`] and then into the pod herald builds.
//!
//! Owns the merge order and the checks that need more than the settings
//! themselves. Decisions:
//!
//! - **Tier over defaults, field by field.** Labels and annotations merge
//!   key by key; env and volumes by name, mounts by mount path, pull
//!   secrets by name (a union); security contexts field by field; every
//!   other field (nodeSelector, tolerations, affinity, spread,
//!   priorityClassName) is replaced whole by the tier's when the tier sets
//!   it, so a tier can also clear a default with an empty value.
//! - **Settings over herald's baseline.** Security contexts merge field by
//!   field over herald's locked-down ones, so a setting changes only what
//!   it names. herald fixes no user or group: the image's numeric `USER`
//!   satisfies `runAsNonRoot`, and platforms that assign IDs (OpenShift)
//!   can.
//! - **What settings cannot reach.** The type has no container, port or
//!   probe field; herald's own labels, annotation, volumes, mount
//!   directories and `HERALD_*` variables are refused
//!   ([`PodTemplate::refusals`], the CRD's rules), as is a mount that
//!   overlaps the tier's queue or spool directory or names no volume.
//!   Herald's env comes first and settings' variables after, except that a
//!   setting replaces an operator-wide variable of the same name (`OTEL_*`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::api::crd;
use crate::api::pod_template::{PodTemplate, PodTemplateMetadata, Refusal, at_or_below};
use crate::validate::structural::Checker;

use super::inputs::DesiredError;

/// Where a tier's settings sit, for error paths.
pub const TIER_FIELD: &str = "spec.podTemplate";

/// `defaults` with `tier`'s settings over them.
pub fn merge(defaults: &PodTemplate, tier: Option<&PodTemplate>) -> PodTemplate {
    let Some(t) = tier else {
        return defaults.clone();
    };
    let d = defaults;
    PodTemplate {
        metadata: merge_metadata(d.metadata.as_ref(), t.metadata.as_ref()),
        image_pull_secrets: keyed(&d.image_pull_secrets, &t.image_pull_secrets, |s| {
            s.name.clone()
        }),
        node_selector: or(&t.node_selector, &d.node_selector),
        tolerations: or(&t.tolerations, &d.tolerations),
        affinity: or(&t.affinity, &d.affinity),
        topology_spread_constraints: or(
            &t.topology_spread_constraints,
            &d.topology_spread_constraints,
        ),
        priority_class_name: or(&t.priority_class_name, &d.priority_class_name),
        security_context: overlay_opt(&d.security_context, &t.security_context),
        container_security_context: overlay_opt(
            &d.container_security_context,
            &t.container_security_context,
        ),
        env: keyed(&d.env, &t.env, |e| e.name.clone()),
        volumes: keyed(&d.volumes, &t.volumes, |v| v.name.clone()),
        volume_mounts: keyed(&d.volume_mounts, &t.volume_mounts, |m| m.mount_path.clone()),
    }
}

fn merge_metadata(
    d: Option<&PodTemplateMetadata>,
    t: Option<&PodTemplateMetadata>,
) -> Option<PodTemplateMetadata> {
    let maps = |f: fn(&PodTemplateMetadata) -> &Option<BTreeMap<String, String>>| {
        let mut out: Option<BTreeMap<String, String>> = None;
        for m in [d, t].into_iter().flatten() {
            if let Some(map) = f(m) {
                out.get_or_insert_with(BTreeMap::new)
                    .extend(map.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
        }
        out
    };
    let merged = PodTemplateMetadata {
        labels: maps(|m| &m.labels),
        annotations: maps(|m| &m.annotations),
    };
    (merged != PodTemplateMetadata::default()).then_some(merged)
}

/// The tier's value when it sets one, else the default.
fn or<T: Clone>(tier: &Option<T>, default: &Option<T>) -> Option<T> {
    tier.clone().or_else(|| default.clone())
}

/// `d`'s entries with `t`'s over them by key; `t`'s new keys after, in
/// their order.
fn keyed<T: Clone>(
    d: &Option<Vec<T>>,
    t: &Option<Vec<T>>,
    key: impl Fn(&T) -> String,
) -> Option<Vec<T>> {
    match (d, t) {
        (None, None) => None,
        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
        (Some(d), Some(t)) => {
            let mut out: Vec<T> = d
                .iter()
                .map(|e| {
                    let k = key(e);
                    t.iter().find(|n| key(n) == k).unwrap_or(e).clone()
                })
                .collect();
            out.extend(
                t.iter()
                    .filter(|n| !d.iter().any(|e| key(e) == key(n)))
                    .cloned(),
            );
            Some(out)
        }
    }
}

fn overlay_opt<T: Clone + Serialize + DeserializeOwned>(
    base: &Option<T>,
    over: &Option<T>,
) -> Option<T> {
    match (base, over) {
        (Some(b), Some(o)) => overlay(b, Some(o)).ok().or_else(|| Some(o.clone())),
        (b, o) => o.clone().or_else(|| b.clone()),
    }
}

/// `base` with every field `over` sets replaced by `over`'s (one level
/// deep: a set `capabilities` replaces herald's whole).
pub fn overlay<T: Serialize + DeserializeOwned>(
    base: &T,
    over: Option<&T>,
) -> Result<T, DesiredError> {
    let render = |e: serde_json::Error| DesiredError::Render(e.to_string());
    let mut merged = serde_json::to_value(base).map_err(render)?;
    if let Some(over) = over {
        let over = serde_json::to_value(over).map_err(render)?;
        if let (Value::Object(m), Value::Object(o)) = (&mut merged, over) {
            m.extend(o);
        }
    }
    serde_json::from_value(merged).map_err(render)
}

/// Settings refused in a tier's `spec.podTemplate`, as a [`DesiredError`]
/// naming the field.
pub fn check_tier(settings: Option<&PodTemplate>) -> Result<(), DesiredError> {
    match settings
        .map(PodTemplate::refusals)
        .unwrap_or_default()
        .first()
    {
        Some(r) => Err(refused(r)),
        None => Ok(()),
    }
}

fn refused(r: &Refusal) -> DesiredError {
    DesiredError::InvalidPodTemplate {
        field: format!("{TIER_FIELD}.{}", r.field),
        why: r.why.clone(),
    }
}

/// Merge `settings` into the pod herald built (agent container first) and
/// check what needs the whole pod: mounts clear of the tier's claims
/// (`claims`: each volume's name and mount path), and naming a volume the
/// pod has.
pub(super) fn apply(
    pod: &mut PodSpec,
    settings: &PodTemplate,
    claims: &[(&str, &str)],
    operator_env: &[String],
) -> Result<(), DesiredError> {
    let s = settings;
    if let Some(secrets) = &s.image_pull_secrets {
        pod.image_pull_secrets = Some(secrets.clone());
    }
    pod.node_selector = s.node_selector.clone().filter(|m| !m.is_empty());
    pod.tolerations = s.tolerations.clone().filter(|t| !t.is_empty());
    pod.affinity = s.affinity.clone();
    pod.topology_spread_constraints = s
        .topology_spread_constraints
        .clone()
        .filter(|t| !t.is_empty());
    pod.priority_class_name = s.priority_class_name.clone();
    if let Some(sc) = &pod.security_context {
        pod.security_context = Some(overlay(sc, s.security_context.as_ref())?);
    }
    let mut pod_volumes = pod.volumes.take().unwrap_or_default();
    pod_volumes.extend(s.volumes.iter().flatten().cloned());

    let Some(c) = pod.containers.first_mut() else {
        return Err(DesiredError::Render(
            "the pod has no agent container".to_owned(),
        ));
    };
    if let Some(sc) = &c.security_context {
        c.security_context = Some(overlay(sc, s.container_security_context.as_ref())?);
    }
    if let Some(extra) = &s.env {
        let mut env = c.env.take().unwrap_or_default();
        // An operator-wide variable (OTEL_*) gives way to a setting's.
        env.retain(|e| !(operator_env.contains(&e.name) && extra.iter().any(|x| x.name == e.name)));
        env.extend(extra.iter().cloned());
        c.env = Some(env);
    }
    for (i, m) in s.volume_mounts.iter().flatten().enumerate() {
        let field = || format!("{TIER_FIELD}.volumeMounts[{i}]");
        if let Some((volume, dir)) = claims
            .iter()
            .find(|(_, dir)| at_or_below(&m.mount_path, dir) || at_or_below(dir, &m.mount_path))
        {
            return Err(DesiredError::InvalidPodTemplate {
                field: format!("{}.mountPath", field()),
                why: format!(
                    "{} overlaps {dir}, where the tier's {volume} volume is mounted",
                    m.mount_path
                ),
            });
        }
        if !pod_volumes.iter().any(|v| v.name == m.name) {
            return Err(DesiredError::InvalidPodTemplate {
                field: format!("{}.name", field()),
                why: format!("no volume named {} in the pod", m.name),
            });
        }
    }
    if let Some(mounts) = &s.volume_mounts {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .extend(mounts.iter().cloned());
    }
    pod.volumes = Some(pod_volumes);
    Ok(())
}

/// The settings' labels and annotations on a pod template, under herald's
/// own (which win; the checks refuse a clash before this).
pub fn apply_metadata(template: &mut PodTemplateSpec, settings: &PodTemplate) {
    let Some(m) = &settings.metadata else {
        return;
    };
    let meta = template.metadata.get_or_insert_with(Default::default);
    for (theirs, ours) in [
        (&m.labels, &mut meta.labels),
        (&m.annotations, &mut meta.annotations),
    ] {
        let Some(theirs) = theirs else { continue };
        let ours = ours.get_or_insert_with(BTreeMap::new);
        for (k, v) in theirs {
            ours.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
}

/// Why the operator's pod defaults cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PodDefaultsError {
    #[error("{source_name}: not JSON or YAML: {why}")]
    Parse { source_name: String, why: String },
    #[error("{source_name}: {field}: {why}")]
    Invalid {
        source_name: String,
        field: String,
        why: String,
    },
}

/// Parse the operator's pod defaults (JSON or YAML, the shape of a tier's
/// `spec.podTemplate`) strictly: unknown fields, wrong types and herald's
/// reserved keys are errors naming the field under `source_name`.
pub fn parse_defaults(source_name: &str, text: &str) -> Result<PodTemplate, PodDefaultsError> {
    let parse = |why: String| PodDefaultsError::Parse {
        source_name: source_name.to_owned(),
        why,
    };
    let invalid = |field: String, why: String| PodDefaultsError::Invalid {
        source_name: source_name.to_owned(),
        field,
        why,
    };
    let value: Value = if text.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        serde_saphyr::from_str(text).map_err(|e| parse(e.to_string()))?
    };
    let value = if value.is_null() {
        Value::Object(Default::default())
    } else {
        value
    };
    let schema = tier_settings_schema()
        .ok_or_else(|| parse("the DeliveryTier CRD has no spec.podTemplate".to_owned()))?;
    let mut violations = Vec::new();
    Checker::default().check(&schema, &value, "", &mut violations);
    if let Some(v) = violations.first() {
        return Err(invalid(v.path.clone(), v.message.clone()));
    }
    let settings: PodTemplate = serde_json::from_value(value).map_err(|e| parse(e.to_string()))?;
    if let Some(r) = settings.refusals().first() {
        return Err(invalid(r.field.clone(), r.why.clone()));
    }
    Ok(settings)
}

/// The schema of `spec.podTemplate` in the DeliveryTier CRD.
fn tier_settings_schema() -> Option<Value> {
    let c = crd::crd_for("DeliveryTier")?;
    let schema = c
        .spec
        .versions
        .first()?
        .schema
        .as_ref()?
        .open_api_v3_schema
        .as_ref()?;
    let v = serde_json::to_value(schema).ok()?;
    v.pointer("/properties/spec/properties/podTemplate")
        .cloned()
}

#[cfg(test)]
mod tests;
