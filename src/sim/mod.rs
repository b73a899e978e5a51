//! `herald simulate`: run a configuration against a workload on a virtual
//! clock and report what Telegram would have seen.
//!
//! ```text
//! herald simulate -f config.yaml --workload workloads/backlog-10k.yaml [--json] [--seed N]
//! ```
//!
//! Owns: loading the configuration exactly as the agent does (the same
//! validation, with the same `file:line:col: Kind/name: path: message`
//! diagnostics, then policy resolution), the workload file, and the report.
//! The delivery decisions are the real dispatcher's
//! ([`crate::engine::dispatch`]); the far side is a model of the Bot API's
//! limits over sliding windows on arrival time, plus webhook and spool
//! sinks with the workload's faults ([`sinks`]).
//!
//! Leaves out, and says so in the report: limiter and store backends (one
//! process is modelled with in-memory limiters, whatever `backend: redis`
//! or `store.type: redis` say), replicas and canaries, and payloads.
//!
//! Invariant: deterministic — the same files and seed give the same report;
//! nothing here reads a clock or touches the network.

pub mod report;
pub mod run;
pub mod sinks;
pub mod tiers;
pub mod workload;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use crate::api::delivery_tier::StoreKind;
use crate::api::rate_limit_policy::LimiterBackend;
use crate::policy::ConfigSet;
use crate::validate::{self, Diagnostic, Object, Report, Severity};

pub use report::SimReport;
pub use workload::Workload;

/// What `herald simulate` is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimArgs {
    /// Config files or directories (`-f`, repeatable), as for `herald validate`.
    pub config: Vec<PathBuf>,
    /// The workload file (`--workload`).
    pub workload: PathBuf,
    /// Seed of every random choice (`--seed`, default 1).
    pub seed: u64,
    /// Tier messages enter by (`--entry-tier`); else the Agent document's
    /// `entryTier`, else the highest-priority tier that is no fallback.
    pub entry_tier: Option<String>,
}

/// Why a simulation did not run. `exit_code` is what the CLI returns.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration is invalid; one diagnostic per line.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Diagnostic>),
    #[error(transparent)]
    Input(#[from] validate::InputError),
    #[error("{path}: {message}")]
    Workload { path: String, message: String },
    #[error("{0}")]
    Setup(String),
}

impl SimError {
    /// 1 for invalid configuration or workload, 2 for unreadable input.
    pub fn exit_code(&self) -> i32 {
        match self {
            SimError::Input(_) => 2,
            SimError::Invalid(_) | SimError::Workload { .. } | SimError::Setup(_) => 1,
        }
    }
}

/// Loads, validates and simulates; the CLI renders the report with
/// [`SimReport::to_table`] or [`SimReport::to_json`].
pub fn run(args: &SimArgs) -> Result<SimReport, SimError> {
    // `-` reads the config from standard input, as `herald validate -f -`.
    let report = validate::validate_inputs(&args.config, Some(&mut std::io::stdin()))?;
    let path = args.workload.display().to_string();
    let text = std::fs::read_to_string(&args.workload).map_err(|e| SimError::Workload {
        path: path.clone(),
        message: e.to_string(),
    })?;
    let name = args
        .workload
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    simulate(
        &report,
        &path,
        &name,
        &text,
        args.seed,
        args.entry_tier.as_deref(),
    )
}

/// The same from a validation report and workload text already in memory
/// (`path` and `name` only label errors and the report).
pub fn simulate(
    report: &Report,
    path: &str,
    name: &str,
    workload_text: &str,
    seed: u64,
    entry_tier: Option<&str>,
) -> Result<SimReport, SimError> {
    let errors: Vec<Diagnostic> = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .cloned()
        .collect();
    if !errors.is_empty() {
        return Err(SimError::Invalid(errors));
    }
    let set = ConfigSet::resolve(report).map_err(SimError::Invalid)?;
    let workload_err = |message: String| SimError::Workload {
        path: path.to_owned(),
        message,
    };
    let mut workload = Workload::parse(workload_text).map_err(workload_err)?;
    workload
        .validate(&tiers::names(&set))
        .map_err(|e| workload_err(e.to_string()))?;
    if workload.name.is_none() {
        workload.name = Some(name.to_owned());
    }
    let agent_entry = report.objects.iter().find_map(|o| match &o.object {
        Object::Agent(a) => a.entry_tier.clone(),
        _ => None,
    });
    let entry =
        tiers::entry_tier(&set, entry_tier.or(agent_entry.as_deref())).map_err(SimError::Setup)?;
    let config = tiers::dispatch_config(&set, &entry);
    let notes = notes(&set);
    let sim = run::Simulation::new(config, workload, seed).map_err(SimError::Setup)?;
    let mut out = sim.run();
    out.seed = seed;
    out.entry_tier = entry;
    out.notes = notes;
    Ok(out)
}

/// What the configuration asks for that one simulated process ignores.
fn notes(set: &ConfigSet) -> Vec<String> {
    let mut notes = Vec::new();
    for t in &set.tiers {
        if t.limiter_backend == LimiterBackend::Redis {
            notes.push(format!(
                "{}: limiter backend redis ignored; one process with in-memory limiters is modelled",
                t.name
            ));
        }
        if t.spec.store.kind == StoreKind::Redis {
            notes.push(format!(
                "{}: redis store ignored; the queue is the dispatcher's memory",
                t.name
            ));
        }
    }
    notes
}
