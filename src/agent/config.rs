//! Loading a standalone agent's config file: herald documents plus one
//! `Agent` document, validated exactly as `herald validate` does, resolved
//! into engine policy, with every secret looked up once.
//!
//! A reload builds a whole new [`AgentConfig`]; if anything is wrong the
//! caller keeps the old one. The config remembers where each document's
//! fields were written ([`AgentConfig::place_of`]), so errors met later —
//! a port in use, a store file that cannot be opened — name the file, line
//! and field like the loader's own errors.

use std::path::{Path, PathBuf};

use crate::agent::secrets::{self, MissingSecret, Secret};
use crate::api::AgentSpec;
use crate::api::delivery_tier::Channel;
use crate::policy::{ConfigSet, TierPolicy};
pub use crate::sink::TierSecrets;
use crate::validate::yaml::Document;
use crate::validate::{Diagnostic, InputError, Object, validate_paths, validate_sources};

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{}", .0.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error("{0}")]
    Missing(String),
    #[error(transparent)]
    Secret(#[from] MissingSecret),
    #[error(
        "the new configuration changes {} which the agent reads only at start; restart the agent to apply it",
        .0.join(", ")
    )]
    NeedsRestart(Vec<String>),
}

/// One tier, resolved, with its secrets.
#[derive(Clone, Debug)]
pub struct TierRuntime {
    pub policy: TierPolicy,
    pub secrets: TierSecrets,
}

/// A complete, usable agent configuration.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub source: PathBuf,
    pub agent: AgentSpec,
    /// The tier new messages enter unless they name another.
    pub entry_tier: String,
    pub tiers: Vec<TierRuntime>,
    pub admin_token: Option<Secret>,
    /// Where each document was written, for errors about its fields.
    pub places: Places,
}

/// The documents of a config file with the position of each of their
/// fields. Holds no secret values (documents only name secrets), and its
/// `Debug` leaves the documents out.
#[derive(Clone, Default)]
pub struct Places(Vec<Place>);

#[derive(Clone)]
struct Place {
    kind: String,
    name: String,
    file: String,
    doc: Document,
}

impl std::fmt::Debug for Places {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|p| format!("{}/{}", p.kind, p.name)))
            .finish()
    }
}

impl AgentConfig {
    /// Load and check `path`, reading secrets through `env`.
    pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let report = validate_paths(&[path.to_path_buf()])?;
        Self::from_report(report, path, env)
    }

    /// Check a config held in memory (a ConfigMap's value); `source` names
    /// it in diagnostics and in [`AgentConfig::source`].
    pub fn from_text(
        source: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let name = source.display().to_string();
        let report = validate_sources([(name.as_str(), text)]);
        Self::from_report(report, source, env)
    }

    fn from_report(
        report: crate::validate::Report,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        if report.error_count() > 0 {
            return Err(ConfigError::Invalid(
                report
                    .diagnostics
                    .into_iter()
                    .filter(|d| d.severity == crate::validate::Severity::Error)
                    .collect(),
            ));
        }
        let set = ConfigSet::resolve(&report).map_err(ConfigError::Invalid)?;
        let agents: Vec<&AgentSpec> = report
            .objects
            .iter()
            .filter_map(|o| match &o.object {
                Object::Agent(a) => Some(a.as_ref()),
                _ => None,
            })
            .collect();
        let agent = match agents.as_slice() {
            [] => AgentSpec::default(),
            [one] => (*one).clone(),
            _ => {
                return Err(ConfigError::Missing(format!(
                    "{}: more than one Agent document",
                    path.display()
                )));
            }
        };
        if set.tiers.is_empty() {
            return Err(ConfigError::Missing(format!(
                "{}: no DeliveryTier documents: the agent has nowhere to deliver",
                path.display()
            )));
        }
        let entry_tier = match &agent.entry_tier {
            Some(t) => t.clone(),
            None => {
                crate::policy::dispatch::entry_tier(&set, None).map_err(ConfigError::Missing)?
            }
        };
        let mut tiers = Vec::new();
        for t in &set.tiers {
            let mut s = TierSecrets::default();
            if t.spec.channel == Channel::Telegram
                && let Some(r) = t
                    .spec
                    .telegram
                    .as_ref()
                    .and_then(|tg| tg.token_secret_ref.as_ref())
            {
                s.bot_token = Some(secrets::resolve(&agent.secrets, r, env)?);
            }
            // Only the channel in use needs its secret: a leftover webhook
            // section on a telegram tier must not demand an HMAC key.
            if t.spec.channel == Channel::Webhook
                && let Some(r) = t
                    .spec
                    .webhook
                    .as_ref()
                    .and_then(|w| w.hmac_secret_ref.as_ref())
            {
                s.hmac_secret = Some(secrets::resolve(&agent.secrets, r, env)?);
            }
            // Only the entry tier's store is opened (messages are stored
            // once, whichever tier sends them).
            if t.name == entry_tier
                && t.spec.store.kind == crate::api::delivery_tier::StoreKind::Redis
                && let Some(r) = t.spec.store.redis.as_ref()
            {
                s.redis_url = Some(secrets::resolve(&agent.secrets, &r.url_secret_ref, env)?);
            }
            tiers.push(TierRuntime {
                policy: t.clone(),
                secrets: s,
            });
        }
        let admin_token = match &agent.admin_token_ref {
            Some(r) => Some(secrets::resolve(&agent.secrets, r, env)?),
            None => None,
        };
        let places = Places(
            report
                .objects
                .iter()
                .map(|o| Place {
                    kind: o.kind.clone(),
                    name: o.name.clone(),
                    file: o.file.clone(),
                    doc: o.doc.clone(),
                })
                .collect(),
        );
        Ok(AgentConfig {
            source: path.to_path_buf(),
            agent,
            entry_tier,
            tiers,
            admin_token,
            places,
        })
    }

    pub fn tier(&self, name: &str) -> Option<&TierRuntime> {
        self.tiers.iter().find(|t| t.policy.name == name)
    }

    /// The tier whose bot token is `token`, compared in constant time.
    pub fn tier_for_token(&self, token: &str) -> Option<&TierRuntime> {
        self.tiers.iter().find(|t| {
            t.secrets
                .bot_token
                .as_ref()
                .is_some_and(|s| constant_time_eq(s.expose().as_bytes(), token.as_bytes()))
        })
    }

    /// `file:line:col: Kind/name: path` for the field `path` (such as
    /// `spec.listen`) of the document `kind` named `name` (any name when
    /// `None`: there is one Agent document at most). A field left out
    /// points at its document; without the document, at the file.
    pub fn place_of(&self, kind: &str, name: Option<&str>, path: &str) -> String {
        let found = self
            .places
            .0
            .iter()
            .find(|p| p.kind == kind && name.is_none_or(|n| p.name == n));
        match found {
            Some(p) => {
                let at = p.doc.position_of(path);
                format!(
                    "{}:{}:{}: {}/{}: {path}",
                    p.file, at.line, at.col, p.kind, p.name
                )
            }
            None => format!(
                "{}: {kind}{}: {path} (not written; its default applies)",
                self.source.display(),
                name.map(|n| format!("/{n}")).unwrap_or_default()
            ),
        }
    }

    /// [`AgentConfig::place_of`] for a field of the Agent document.
    pub fn agent_field(&self, path: &str) -> String {
        self.place_of(crate::api::agent::AGENT_KIND, None, path)
    }

    pub fn tier_names(&self) -> Vec<String> {
        self.tiers.iter().map(|t| t.policy.name.clone()).collect()
    }
}

/// Equal-length comparison without early exit, so response timing does not
/// reveal how much of a guessed token was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standalone_sample_loads_with_its_token() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples/standalone.yaml");
        let env = |v: &str| match v {
            "HERALD_SECRET_DEMO_BOT_TOKEN" => Some("123:abc".to_owned()),
            "HERALD_SECRET_HERALD_ADMIN_TOKEN" => Some("admin-secret".to_owned()),
            _ => None,
        };
        let c = AgentConfig::load(&path, &env).unwrap();
        assert_eq!(c.entry_tier, "demo-telegram");
        assert_eq!(c.tiers.len(), 2);
        assert!(c.tier_for_token("123:abc").is_some());
        assert!(c.tier_for_token("123:abd").is_none());
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("123:abc") && !debug.contains("admin-secret"),
            "{debug}"
        );
        // A missing secret names where it was looked for.
        let err = AgentConfig::load(&path, &|_| None).unwrap_err().to_string();
        assert!(err.contains("HERALD_SECRET_DEMO_BOT_TOKEN"), "{err}");
    }
}
