//! `herald rollout`, and the agent client commands' way through the API
//! server (`--tier`): the command line as a user meets it — help, the
//! kubectl plugin name, and errors that keep their cause. Nothing here
//! needs a cluster: the kubeconfigs point at a closed port.

use std::path::Path;
use std::process::{Command, Output};

fn herald_at(binary: &Path, args: &[&str]) -> Output {
    Command::new(binary)
        .args(args)
        // Never the developer's own kubeconfig or cluster.
        .env_remove("KUBECONFIG")
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .expect("run herald")
}

fn herald(args: &[&str]) -> Output {
    herald_at(Path::new(env!("CARGO_BIN_EXE_herald")), args)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A kubeconfig with one context, `closed`, whose server refuses
/// connections (port 1 of the loopback address).
fn kubeconfig(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1
kind: Config
clusters:
- name: closed
  cluster: {server: 'http://127.0.0.1:1'}
users:
- name: nobody
  user: {token: not-a-token}
contexts:
- name: closed
  context: {cluster: closed, user: nobody, namespace: apps}
current-context: closed
",
    )
    .expect("write kubeconfig");
    path
}

#[test]
fn status_help_lists_the_watch_and_connection_flags() {
    let out = herald(&["rollout", "status", "--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for flag in [
        "--watch",
        "--kubeconfig",
        "--context",
        "--namespace",
        "Usage: herald rollout status",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[cfg(unix)]
#[test]
fn as_a_kubectl_plugin_help_names_kubectl_herald() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plugin = dir.path().join("kubectl-herald");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_herald"), &plugin).expect("symlink");
    let out = herald_at(&plugin, &["rollout", "status", "--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    assert!(
        help.contains("Usage: kubectl herald rollout status"),
        "{help}"
    );
    // A usage error names the plugin the same way.
    let out = herald_at(&plugin, &["rollout", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("kubectl herald rollout status"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_missing_kubeconfig_is_named_with_its_cause() {
    let out = herald(&[
        "rollout",
        "status",
        "bots",
        "--kubeconfig",
        "/nonexistent/kubeconfig",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("reading kubeconfig /nonexistent/kubeconfig"),
        "{err}"
    );
    // The I/O error itself, not only our context.
    assert!(err.matches(": ").count() >= 2, "{err}");
}

#[test]
fn an_unknown_context_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(dir.path());
    let config = config.to_str().expect("utf-8 path");
    let out = herald(&[
        "rollout",
        "--kubeconfig",
        config,
        "--context",
        "elsewhere",
        "status",
        "bots",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("loading kubeconfig") && err.contains("elsewhere"),
        "{err}"
    );
}

#[test]
fn an_unreachable_api_is_reported_with_the_tier_and_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(dir.path());
    let config = config.to_str().expect("utf-8 path");
    for args in [
        &["rollout", "status", "bots", "--kubeconfig", config][..],
        &[
            "rollout",
            "status",
            "bots",
            "--kubeconfig",
            config,
            "--context",
            "closed",
            "--watch",
        ][..],
    ] {
        let out = herald(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = text(&out.stderr);
        // The namespace comes from the context; the cause is the refused
        // connection.
        assert!(err.contains("reading DeliveryTier apps/bots"), "{err}");
        assert!(err.to_lowercase().contains("connect"), "{err}");
    }
}

#[test]
fn the_gates_are_listed_and_explain_themselves() {
    let out = herald(&["rollout", "--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for command in ["promote", "abort", "pause", "resume", "retry", "status"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
    for (command, says) in [
        ("pause", "a failed analysis still aborts"),
        ("resume", "the time it was paused"),
        ("retry", "from the first step"),
    ] {
        let out = herald(&["rollout", command, "--help"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let help = text(&out.stdout);
        assert!(
            help.contains(&format!("Usage: herald rollout {command}")),
            "{help}"
        );
        assert!(
            help.contains(says),
            "{command}: {says:?} missing from:\n{help}"
        );
        assert!(help.contains("--kubeconfig"), "{help}");
    }
}

#[test]
fn a_gate_that_cannot_reach_the_api_fails_with_the_cause() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(dir.path());
    let config = config.to_str().expect("utf-8 path");
    for command in ["pause", "resume", "retry"] {
        let out = herald(&["rollout", command, "bots", "--kubeconfig", config]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let err = text(&out.stderr);
        assert!(err.to_lowercase().contains("connect"), "{command}: {err}");
        assert!(text(&out.stdout).is_empty(), "{command}");
    }
}

#[test]
fn client_commands_reach_a_tier_through_the_api_server() {
    let out = herald(&["status", "--help"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    for flag in [
        "--tier",
        "--kubeconfig",
        "--context",
        "--namespace",
        "--url",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(dir.path());
    let config = config.to_str().expect("utf-8 path");
    let out = herald(&["status", "--tier", "bots", "--kubeconfig", config]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    // The namespace comes from the context; the cause is the refused
    // connection to the API server, not to an agent.
    assert!(
        err.contains("DeliveryTier apps/bots through the API server"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("connect"), "{err}");
    // The admin API goes the same way, its token in a header the proxy
    // passes on; the token appears in no error.
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "dlq",
            "list",
            "--tier",
            "bots",
            "-n",
            "apps",
            "--kubeconfig",
            config,
        ])
        .env("HERALD_ADMIN_TOKEN", "admin-SECRET-token")
        .output()
        .expect("run herald");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("DeliveryTier apps/bots through the API server"),
        "{err}"
    );
    assert!(!err.contains("SECRET"), "{err}");
}
