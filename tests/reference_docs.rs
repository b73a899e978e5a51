//! docs/reference.md is generated: it must equal `render_reference()`, the
//! rendering of the CRD schemas and the Agent schema that src/api produces.
//!
//! What the fields mean is src/api's business; this file only pins that the
//! checked-in reference says the same. Refresh it after changing a type:
//! `HERALD_UPDATE_DOCS=1 cargo test --test reference_docs`.

use std::path::PathBuf;

use herald::api::reference::{REFRESH_COMMAND, render_reference};

const UPDATE_ENV: &str = "HERALD_UPDATE_DOCS";

fn reference_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join("reference.md")
}

/// The first line where two texts part, for a message that says where.
fn first_difference(have: &str, want: &str) -> String {
    let mut have_lines = have.lines();
    let mut want_lines = want.lines();
    for n in 1.. {
        match (have_lines.next(), want_lines.next()) {
            (Some(h), Some(w)) if h == w => continue,
            (None, None) => return "only line endings differ".to_owned(),
            (h, w) => {
                return format!(
                    "line {n}:\n  checked in: {}\n  generated:  {}",
                    h.unwrap_or("<end of file>"),
                    w.unwrap_or("<end of file>")
                );
            }
        }
    }
    unreachable!("the loop returns")
}

#[test]
fn reference_doc_matches_the_schemas() {
    let path = reference_path();
    let want = render_reference();
    assert!(
        want.contains(REFRESH_COMMAND),
        "the reference must say how it is refreshed"
    );
    if std::env::var_os(UPDATE_ENV).is_some() {
        std::fs::write(&path, &want).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} is out of date with the schemas in src/api ({}); regenerate it with `{REFRESH_COMMAND}`",
        path.display(),
        first_difference(&have, &want)
    );
}
