//! `herald crd [--kind K]`: print one or all CRDs as YAML.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use herald::api::crd;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print only this kind (DeliveryTier, RateLimitPolicy, CircuitPolicy, DegradationProfile).
    #[arg(long)]
    kind: Option<String>,
    /// Write each CRD to DIR/<plural>.herald.dev.yaml instead of printing.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<std::path::PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let crds = match &args.kind {
        Some(kind) => match crd::crd_for(kind) {
            Some(c) => vec![c],
            None => {
                eprintln!(
                    "herald crd: unknown kind {kind:?}; expected one of {}",
                    crd::KINDS.join(", ")
                );
                return Ok(ExitCode::from(2));
            }
        },
        None => crd::all(),
    };
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for c in &crds {
            let path = dir.join(crd::file_name(c));
            std::fs::write(&path, crd::to_yaml(c).context("rendering CRD")?)
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = std::io::stdout().lock();
    for (i, c) in crds.iter().enumerate() {
        if i > 0 {
            writeln!(out, "---")?;
        }
        out.write_all(crd::to_yaml(c).context("rendering CRD")?.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
