//! herald's operator as a host process against the real API server, under
//! the chart's ServiceAccount: the chart is installed with Helm (with no
//! operator replicas of its own), and the process authenticates with a
//! token of the chart's ServiceAccount, so exactly the chart's RBAC applies.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::cluster::{Cluster, arg, cluster, herald_bin, reap_with_this_process, root, wait_for};
use crate::helm::helm;

/// The namespace the chart is installed in, as a user would.
pub const OPERATOR_NS: &str = "herald-system";
const RELEASE: &str = "herald";

/// One operator process; killed when dropped.
pub struct Operator {
    pub child: Child,
    pub identity: String,
    pub metrics_port: u16,
    log: Arc<Mutex<String>>,
}

impl Operator {
    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Its /metrics text.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics").unwrap_or_default()
    }

    /// A counter or gauge without labels from /metrics.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Options of one operator process.
pub struct Launch<'a> {
    pub identity: &'a str,
    /// `--namespace`: watch this namespace only (all when None).
    pub namespace: Option<&'a str>,
    pub lease_name: &'a str,
    pub extra: &'a [&'a str],
    /// Another herald binary than the one this test was built with.
    pub bin: Option<&'a str>,
}

/// The chart installed and one operator (watching every namespace) running
/// under its ServiceAccount, shared by the tests that need an operator.
pub fn shared_operator() -> &'static Operator {
    static OPERATOR: OnceLock<Operator> = OnceLock::new();
    OPERATOR.get_or_init(|| {
        let op = launch(&Launch {
            identity: "e2e-operator",
            namespace: None,
            lease_name: "herald-operator",
            // Fresh figures in status sooner than the default minute; no
            // agent answers here anyway.
            extra: &["--status-interval", "5s"],
            bin: None,
        });
        reap_with_this_process(op.child.id());
        op
    })
}

/// The chart's ServiceAccount kubeconfig, after installing the chart once.
pub fn chart_kubeconfig() -> &'static PathBuf {
    static KUBECONFIG: OnceLock<PathBuf> = OnceLock::new();
    KUBECONFIG.get_or_init(|| {
        let c = cluster();
        install_chart(c);
        let accounts = c.kubectl_ok(&[
            "get",
            "serviceaccounts",
            "-n",
            OPERATOR_NS,
            "-l",
            &format!("app.kubernetes.io/instance={RELEASE}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ]);
        let account = accounts
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("the chart created no ServiceAccount in {OPERATOR_NS}"));
        c.service_account_kubeconfig(OPERATOR_NS, account)
    })
}

fn install_chart(c: &Cluster) {
    let chart = root().join("charts/herald");
    let out = Command::new(helm())
        .args(["upgrade", "--install", RELEASE, arg(&chart)])
        .args(["--namespace", OPERATOR_NS, "--create-namespace"])
        .args(["--kubeconfig", arg(&c.kubeconfig)])
        // The operator runs as a host process instead (see the module doc).
        .args(["--set", "operator.replicas=0"])
        // The suite applied the CRDs from crds/ already; Helm would refuse
        // to take over objects it did not create.
        .args(["--set", "crds.install=false"])
        .args(["--wait=false", "--timeout", "120s"])
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("helm could not be started: {e}"));
    assert!(
        out.status.success(),
        "helm install of charts/herald failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts an operator process under the chart's ServiceAccount and waits
/// until its /readyz answers (CRDs checked; leading with warm caches, or
/// standing by for the Lease).
pub fn launch(opts: &Launch) -> Operator {
    let kubeconfig = chart_kubeconfig();
    let metrics_port = free_port();
    let health_port = free_port();
    let mut cmd = Command::new(opts.bin.unwrap_or(herald_bin()));
    cmd.arg("operator")
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
        .args(["--health-addr", &format!("127.0.0.1:{health_port}")])
        .args(["--lease-name", opts.lease_name])
        .args(["--lease-namespace", OPERATOR_NS])
        .args(["--identity", opts.identity])
        .args(opts.extra)
        .env("KUBECONFIG", kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("HERALD_WATCH_NAMESPACE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(ns) = opts.namespace {
        cmd.args(["--namespace", ns]);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("herald operator could not be started: {e}"));
    let log = Arc::new(Mutex::new(String::new()));
    if let Some(stderr) = child.stderr.take() {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = log.lock() {
                    l.push_str(&line);
                    l.push('\n');
                }
            }
        });
    }
    let mut op = Operator {
        child,
        identity: opts.identity.to_owned(),
        metrics_port,
        log,
    };
    let ready = wait_for(Duration::from_secs(60), || {
        if let Ok(Some(status)) = op.child.try_wait() {
            panic!("herald operator exited with {status}:\n{}", op.log());
        }
        (http_get(health_port, "/readyz").as_deref() == Some("ready\n")).then_some(())
    });
    assert!(
        ready.is_some(),
        "herald operator was not ready within 60 s:\n{}",
        op.log()
    );
    op
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A plain HTTP GET on loopback; the body when the status is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let resp = reqwest::blocking::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().ok()
}
