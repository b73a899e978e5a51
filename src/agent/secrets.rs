//! Secret lookup for standalone and in-cluster agents: a `SecretKeyRef`
//! resolves to the file `<dir>/<name>/<key>` (how Kubernetes mounts a
//! Secret) or else the variable `<PREFIX><NAME>_<KEY>`.
//!
//! Values are wrapped in [`Secret`], whose Debug and Display never show them.

use std::path::Path;

use crate::api::agent::SecretSources;
use crate::api::refs::SecretKeyRef;

pub use crate::sink::Secret;

/// A secret could not be found; names where herald looked, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name}/{key} not found: looked for file {file} and environment variable {var}")]
pub struct MissingSecret {
    pub name: String,
    pub key: String,
    pub file: String,
    pub var: String,
}

/// Resolve one reference. Trailing newlines in files are trimmed (editors
/// and `echo` add them; tokens never end in one).
pub fn resolve(
    sources: &SecretSources,
    r: &SecretKeyRef,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, MissingSecret> {
    let file = Path::new(&sources.dir).join(&r.name).join(&r.key);
    if let Ok(text) = std::fs::read_to_string(&file) {
        let value = text.trim_end_matches(['\n', '\r']);
        if !value.is_empty() {
            return Ok(Secret::new(value));
        }
    }
    let var = r.env_var_name(&sources.env_prefix);
    match env(&var) {
        Some(v) if !v.is_empty() => Ok(Secret::new(v)),
        _ => Err(MissingSecret {
            name: r.name.clone(),
            key: r.key.clone(),
            file: file.display().to_string(),
            var,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> SecretKeyRef {
        SecretKeyRef {
            name: "demo-bot".into(),
            key: "token".into(),
        }
    }

    #[test]
    fn file_first_then_environment_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let sources = SecretSources {
            dir: dir.path().display().to_string(),
            env_prefix: "HERALD_SECRET_".into(),
        };
        let env = |v: &str| (v == "HERALD_SECRET_DEMO_BOT_TOKEN").then(|| "123:env".to_owned());
        assert_eq!(resolve(&sources, &r(), &env).unwrap().expose(), "123:env");
        std::fs::create_dir_all(dir.path().join("demo-bot")).unwrap();
        std::fs::write(dir.path().join("demo-bot/token"), "123:file\n").unwrap();
        let s = resolve(&sources, &r(), &env).unwrap();
        assert_eq!(s.expose(), "123:file");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        let none = |_: &str| None;
        let other = SecretKeyRef {
            name: "x".into(),
            key: "y".into(),
        };
        let err = resolve(&sources, &other, &none).unwrap_err().to_string();
        assert!(err.contains("HERALD_SECRET_X_Y"), "{err}");
    }
}
