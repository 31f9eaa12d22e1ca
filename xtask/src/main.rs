//! `cargo xtask update-spec <upstream-openapi.(json|yaml)> [--out openapi.yaml]`
//!
//! Rewrites the crate's `openapi.yaml` from Dub's whole upstream spec: the track paths, the
//! components they reference, and our marked corrections (see `spec.rs`).

mod spec;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [cmd, rest @ ..] if cmd == "update-spec" => update_spec(rest),
        _ => Err("usage: cargo xtask update-spec <upstream-openapi.json> [--out openapi.yaml]".into()),
    }
}

fn update_spec(args: &[String]) -> Result<(), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let (input, out) = match args {
        [input] => (input, root.join("openapi.yaml")),
        [input, flag, out] if flag == "--out" => (input, PathBuf::from(out)),
        _ => return Err("usage: update-spec <upstream-openapi.json> [--out FILE]".into()),
    };
    let text = std::fs::read_to_string(input).map_err(|e| format!("reading {input}: {e}"))?;
    let extracted = spec::extract(&text)?;
    let rendered = spec::render(&extracted.spec)?;
    std::fs::write(&out, rendered).map_err(|e| format!("writing {}: {e}", out.display()))?;
    for line in &extracted.report {
        eprintln!("{line}");
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}
