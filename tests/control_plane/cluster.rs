//! The real control plane the suite runs against, and the tools that talk
//! to it: one `e2e/k8s/up.sh` per test binary (or the cluster named by
//! `HERALD_TEST_KUBECONFIG`), herald's CRDs installed once, `kubectl` and
//! Helm bound to it, a fresh namespace per test.
//!
//! Nothing here skips: when the control plane cannot start, every test
//! fails with up.sh's own reason. Processes the suite starts stop when the
//! test binary exits, however it exits: up.sh's watchdog stops the control
//! plane, and [`reap_with_this_process`] the operators.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The four CRDs, by name.
pub const CRDS: [&str; 4] = [
    "deliverytiers.herald.dev",
    "ratelimitpolicies.herald.dev",
    "circuitpolicies.herald.dev",
    "degradationprofiles.herald.dev",
];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn herald_bin() -> &'static str {
    env!("CARGO_BIN_EXE_herald")
}

pub struct Cluster {
    pub kubeconfig: PathBuf,
    /// Where this binary's files go (kubeconfigs, operator logs).
    pub work: PathBuf,
}

/// The cluster, started (and given herald's CRDs) on first use.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(start) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn start() -> Result<Cluster, String> {
    let work = tempfile::Builder::new()
        .prefix("herald-control-plane.")
        .tempdir()
        .map_err(|e| format!("no temp dir: {e}"))?
        .keep();
    let kubeconfig = match std::env::var_os("HERALD_TEST_KUBECONFIG") {
        Some(path) => PathBuf::from(path),
        None => {
            let started = Instant::now();
            // up.sh logs to stderr, which the test harness does not capture:
            // CI shows the build and start-up as they happen.
            let out = Command::new("bash")
                .arg(root().join("e2e/k8s/up.sh"))
                .args(["--dir"])
                .arg(work.join("k8s"))
                .args(["--owner-pid", &std::process::id().to_string()])
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("bash could not run e2e/k8s/up.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "the control plane did not start (e2e/k8s/up.sh exited with {}; its reason is \
                     above). It needs Go >= 1.24, openssl and python3; see e2e/README.md.",
                    out.status
                ));
            }
            let path = String::from_utf8_lossy(&out.stdout)
                .lines()
                .last()
                .unwrap_or_default()
                .trim()
                .to_owned();
            eprintln!(
                "control plane: up in {:.1}s, KUBECONFIG={path}",
                started.elapsed().as_secs_f64()
            );
            PathBuf::from(path)
        }
    };
    let cluster = Cluster { kubeconfig, work };
    cluster.install_crds()?;
    Ok(cluster)
}

impl Cluster {
    fn install_crds(&self) -> Result<(), String> {
        let crds = root().join("crds");
        let out = self.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=herald-e2e",
            "-k",
            crds.to_str().unwrap_or_default(),
        ]);
        if !out.status.success() {
            return Err(format!(
                "the API server refused herald's CRDs:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        let names: Vec<String> = CRDS.iter().map(|c| format!("crd/{c}")).collect();
        args.extend(names.iter().map(String::as_str));
        let out = self.kubectl(&args);
        if !out.status.success() {
            return Err(format!(
                "herald's CRDs were not Established:\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    }

    fn kubectl_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--request-timeout=30s")
            .args(args)
            .current_dir(root());
        cmd
    }

    /// Runs kubectl against the cluster.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command(args)
            .output()
            .unwrap_or_else(|e| panic!("kubectl could not be started ({e}); see .ci/run"))
    }

    /// Runs kubectl with `stdin` as its input.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .kubectl_command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("kubectl could not be started ({e}); see .ci/run"));
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).expect("kubectl stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// Runs kubectl and returns its stdout; panics with its stderr when it fails.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies YAML (server-side, as a user's field manager) in `namespace`.
    pub fn apply(&self, namespace: &str, yaml: &str) {
        let out = self.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                "--field-manager=e2e-user",
                "-n",
                namespace,
                "-f",
                "-",
            ],
            yaml,
        );
        assert!(
            out.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `kubectl get ... -o json`, or None when the object does not exist.
    pub fn get_json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.kubectl(&all);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("NotFound"), "kubectl {}: {err}", all.join(" "));
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).expect("kubectl printed JSON"))
    }

    /// A namespace of its own for one test, created now; unique across
    /// runs against the same cluster.
    pub fn namespace(&self, prefix: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() % 100_000);
        let name = format!("{prefix}-{run}-{}", N.fetch_add(1, Ordering::Relaxed));
        self.kubectl_ok(&["create", "namespace", &name]);
        name
    }

    /// A kubeconfig for the same server that authenticates as a
    /// ServiceAccount, with a fresh token: whoever uses it has exactly the
    /// RBAC that account was given.
    pub fn service_account_kubeconfig(&self, namespace: &str, account: &str) -> PathBuf {
        let token = self
            .kubectl_ok(&["create", "token", account, "-n", namespace, "--duration=6h"])
            .trim()
            .to_owned();
        let view: Value = serde_json::from_str(&self.kubectl_ok(&[
            "config",
            "view",
            "--raw",
            "--minify",
            "--flatten",
            "-o",
            "json",
        ]))
        .expect("kubectl config view printed JSON");
        let cluster = view["clusters"][0]["cluster"].clone();
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "e2e", "cluster": cluster}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": account, "namespace": namespace}}],
            "current-context": "e2e",
        });
        let path = self.work.join(format!("{namespace}-{account}.kubeconfig"));
        std::fs::write(&path, serde_json::to_vec_pretty(&config).unwrap())
            .expect("write kubeconfig");
        path
    }
}

/// Polls `f` every 100 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills `pid` with SIGKILL once this test process has exited, however it
/// exits: a detached shell polls once a second and ends itself then.
#[allow(clippy::zombie_processes)] // it outlives this process by design
pub fn reap_with_this_process(pid: u32) {
    let _ = Command::new("setsid")
        .args([
            "sh",
            "-c",
            r#"while kill -0 "$0" 2>/dev/null; do sleep 1; done; kill -9 "$1" 2>/dev/null; exit 0"#,
        ])
        .arg(std::process::id().to_string())
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("setsid sh could be started");
}

/// A path as a `&str` for a command line.
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("paths here are UTF-8")
}
