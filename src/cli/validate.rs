//! `herald validate -f PATH...`: exit 0 when clean, 1 on errors, 2 when input
//! cannot be read. `-f -` reads standard input; `-o json|junit` prints a
//! report for CI systems instead of one line per finding.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use herald::validate::{Diagnostic, Report, Severity, validate_inputs};
use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories (searched recursively for *.yaml, *.yml); `-`
    /// reads standard input.
    #[arg(short = 'f', long = "filename", required = true, num_args = 1..)]
    paths: Vec<PathBuf>,
    /// Do not print notes about skipped documents.
    #[arg(short, long)]
    quiet: bool,
    /// How to print the findings.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    /// One `file:line:col: ...` line per finding, then a summary on stderr.
    Text,
    /// One JSON object: counts and every finding with its position.
    Json,
    /// JUnit XML: one test case per object and per file with findings.
    Junit,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut stdin = std::io::stdin().lock();
    let mut report = match validate_inputs(&args.paths, Some(&mut stdin)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herald validate: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    // Rules only the engine can judge (e.g. degradation thresholds that
    // fall as severity rises), once the documents themselves are clean.
    if report.error_count() == 0
        && let Err(more) = herald::policy::ConfigSet::resolve(&report)
    {
        report.diagnostics.extend(more);
    }
    // Findings come per check; readers (and CI annotations) want them in
    // file order.
    report.diagnostics.sort_by(|a, b| {
        (&a.file, a.position.line, a.position.col).cmp(&(&b.file, b.position.line, b.position.col))
    });
    if args.quiet {
        report.diagnostics.retain(|d| d.severity != Severity::Note);
    }
    let errors = report.error_count();
    let valid = valid_objects(&report);
    match args.output {
        Output::Text => {
            for d in &report.diagnostics {
                println!("{d}");
            }
            if errors > 0 {
                eprintln!("{errors} error(s); {valid} herald object(s) valid");
            } else {
                eprintln!("{valid} herald object(s) valid");
            }
        }
        Output::Json => println!("{}", as_json(&report, valid)),
        Output::Junit => print!("{}", as_junit(&report)),
    }
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `Kind/name` of an object, as diagnostics name it.
fn object_name(kind: &str, name: &str) -> String {
    format!("{kind}/{name}")
}

/// Objects no error names: a duplicate, or an object with a broken
/// reference, is not valid.
fn valid_objects(report: &Report) -> usize {
    report
        .objects
        .iter()
        .filter(|o| {
            let me = object_name(&o.kind, &o.name);
            !report.diagnostics.iter().any(|d| {
                d.severity == Severity::Error
                    && d.file == o.file
                    && d.object.as_deref() == Some(&me)
            })
        })
        .count()
}

fn severity(d: &Diagnostic) -> &'static str {
    match d.severity {
        Severity::Error => "error",
        Severity::Note => "note",
    }
}

fn as_json(report: &Report, valid: usize) -> serde_json::Value {
    json!({
        "errors": report.error_count(),
        "objects": report.objects.len(),
        "valid": valid,
        "diagnostics": report.diagnostics.iter().map(|d| json!({
            "severity": severity(d),
            "file": d.file,
            "line": d.position.line,
            "column": d.position.col,
            "object": d.object,
            "path": d.path,
            "message": d.message,
        })).collect::<Vec<_>>(),
    })
}

/// One test case per object (named `Kind/name`, class the file) failing
/// with its errors, and one per file for errors no object owns (a document
/// that did not parse).
fn as_junit(report: &Report) -> String {
    let mut cases: BTreeMap<(String, String), Vec<&Diagnostic>> = BTreeMap::new();
    for o in &report.objects {
        cases
            .entry((o.file.clone(), object_name(&o.kind, &o.name)))
            .or_default();
    }
    for d in report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
    {
        let name = d.object.clone().unwrap_or_else(|| "document".to_owned());
        cases.entry((d.file.clone(), name)).or_default().push(d);
    }
    let failures = cases.values().filter(|f| !f.is_empty()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuite name=\"herald validate\" tests=\"{}\" failures=\"{failures}\" errors=\"0\">\n",
        cases.len()
    ));
    for ((file, name), found) in &cases {
        out.push_str(&format!(
            "  <testcase classname=\"{}\" name=\"{}\"",
            xml(file),
            xml(name)
        ));
        if found.is_empty() {
            out.push_str("/>\n");
            continue;
        }
        out.push_str(">\n");
        for d in found {
            out.push_str(&format!(
                "    <failure message=\"{}\">{}</failure>\n",
                xml(&d.message),
                xml(&d.to_string())
            ));
        }
        out.push_str("  </testcase>\n");
    }
    out.push_str("</testsuite>\n");
    out
}

/// Text escaped for an XML attribute or element.
fn xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 has no way to carry other control characters.
            c if c.is_control() && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_text_is_escaped() {
        assert_eq!(
            xml("a<b & \"c\" 'd'>\u{1}"),
            "a&lt;b &amp; &quot;c&quot; &apos;d&apos;&gt; "
        );
    }
}
