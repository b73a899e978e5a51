//! herald against a real Kubernetes control plane: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler of one pinned release, built
//! from their upstream Go modules and started on loopback by
//! `e2e/k8s/up.sh` (see e2e/README.md). No node runs here, so no pod
//! starts; everything a user meets before the pods is checked for real:
//!
//! - [`schema`]: the CRDs are accepted and structural; the API server and
//!   `herald validate` refuse the same bad documents naming the same field
//!   and accept the same samples; `kubectl explain` documents the fields.
//! - [`reconcile`]: the operator, as a host process under the chart's
//!   ServiceAccount, reconciles the full sample: children by server-side
//!   apply, owned, garbage-collected; status and printer columns; a policy
//!   edit reaching every tier; a second apply writing nothing; Argo CD's
//!   health scripts on what the server returns.
//! - [`leader`]: two operators, one Lease, a SIGKILLed leader replaced.
//! - [`scale`]: 1,000 tiers (a measurement, run with `--ignored`).
//!
//! Nothing skips: without Go, openssl or kubectl every test fails and says
//! what is missing. `HERALD_TEST_KUBECONFIG` points the suite at a control
//! plane that is already up instead of starting one.

#[path = "../common/argocd_lua.rs"]
mod argocd_lua;
#[path = "../common/bad_documents.rs"]
mod bad_documents;
mod cluster;
#[path = "../common/helm.rs"]
mod helm;
mod leader;
mod operator;
mod reconcile;
mod scale;
mod schema;
