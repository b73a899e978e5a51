//! Which Secrets a tier reads, and what for: the one list the index (which
//! tiers a Secret change wakes) and the agent's config (which keys reach
//! the pod as environment variables) both walk.

use crate::api::DeliveryTierSpec;
use crate::api::delivery_tier::{Channel, StoreKind};
use crate::api::refs::SecretKeyRef;

/// What a Secret referenced by a tier is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SecretRole {
    TelegramToken,
    WebhookHmac,
    RedisUrl,
}

impl SecretRole {
    /// Where the reference is written in a DeliveryTier.
    pub const fn field_path(self) -> &'static str {
        match self {
            SecretRole::TelegramToken => "spec.telegram.tokenSecretRef.name",
            SecretRole::WebhookHmac => "spec.webhook.hmacSecretRef.name",
            SecretRole::RedisUrl => "spec.store.redis.urlSecretRef.name",
        }
    }
}

/// The Secrets a tier uses, in role order: the channel's own secret (only
/// for the channel in use) and the Redis URL (only for a redis store).
pub fn secret_refs(spec: &DeliveryTierSpec) -> Vec<(SecretRole, &SecretKeyRef)> {
    let mut out = Vec::new();
    match spec.channel {
        Channel::Telegram => {
            if let Some(r) = spec
                .telegram
                .as_ref()
                .and_then(|t| t.token_secret_ref.as_ref())
            {
                out.push((SecretRole::TelegramToken, r));
            }
        }
        Channel::Webhook => {
            if let Some(r) = spec
                .webhook
                .as_ref()
                .and_then(|w| w.hmac_secret_ref.as_ref())
            {
                out.push((SecretRole::WebhookHmac, r));
            }
        }
        Channel::Spool => {}
    }
    if spec.store.kind == StoreKind::Redis
        && let Some(r) = &spec.store.redis
    {
        out.push((SecretRole::RedisUrl, &r.url_secret_ref));
    }
    out
}
