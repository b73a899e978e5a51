//! The status the operator writes on every policy kind (RateLimitPolicy,
//! CircuitPolicy, DegradationProfile), written once as [`PolicyStatus`].
//!
//! Owns the status fields and their schema. The kinds differ only in how
//! their CRDs describe it (and in a profile's level count), so each kind's
//! spec is a [`PolicyKind`] that supplies those words; the operator
//! computes and compares every kind's status with one function each
//! (`operator::status`).

use std::marker::PhantomData;

use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};

use super::conditions::{Conditions, conditions_schema};

/// What sets one policy kind's status apart in its CRD.
pub trait PolicyKind {
    /// The status's description in the CRD.
    const STATUS_DOC: &'static str;
    /// The description of `usedBy` in the CRD.
    const USED_BY_DOC: &'static str;
    /// Whether the status counts the kind's levels (`levelCount`).
    const HAS_LEVELS: bool;
}

/// Observed state of a policy whose spec is `K`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(
    rename = "PolicyStatus",
    bound = "K: PolicyKind",
    transform = describe::<K>
)]
pub struct PolicyStatus<K> {
    /// The generation this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Accepted and other conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Conditions,
    /// Levels defined above NORMAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level_count: Option<u32>,
    /// DeliveryTiers that reference this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
    /// How many DeliveryTiers reference it (the TIERS column).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_count: Option<u32>,
    #[serde(skip)]
    #[schemars(skip)]
    kind: PhantomData<K>,
}

impl<K> PolicyStatus<K> {
    pub fn new(
        observed_generation: Option<i64>,
        conditions: Conditions,
        level_count: Option<u32>,
        used_by: Vec<String>,
    ) -> Self {
        PolicyStatus {
            observed_generation,
            conditions,
            level_count,
            tier_count: Some(u32::try_from(used_by.len()).unwrap_or(u32::MAX)),
            used_by,
            kind: PhantomData,
        }
    }
}

/// The kind's words in the schema; `levelCount` only where it counts.
fn describe<K: PolicyKind>(schema: &mut Schema) {
    schema.insert("description".into(), K::STATUS_DOC.into());
    let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) else {
        return;
    };
    if !K::HAS_LEVELS {
        properties.remove("levelCount");
    }
    if let Some(used_by) = properties.get_mut("usedBy").and_then(|u| u.as_object_mut()) {
        used_by.insert("description".into(), K::USED_BY_DOC.into());
    }
}
