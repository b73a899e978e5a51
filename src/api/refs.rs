//! References from one herald object to another or to a Secret.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to another herald object in the same namespace, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalRef {
    /// Name of the referenced object in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key inside a Secret in the same namespace. Standalone agents resolve it
/// to the file `<secretsDir>/<name>/<key>` or the environment variable named
/// in the agent document; the value is never logged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

impl SecretKeyRef {
    /// The environment variable that holds this key: `<prefix><NAME>_<KEY>`,
    /// upper-cased, anything but ASCII letters and digits turned into `_`.
    /// The operator writes it into the pod and the agent reads it, so both
    /// take the name from here.
    pub fn env_var_name(&self, prefix: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        format!("{prefix}{}_{}", clean(&self.name), clean(&self.key))
    }
}
