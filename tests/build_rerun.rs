//! Code generation reruns exactly when openapi.yaml changes: editing a description in the spec
//! reruns build.rs on the next build; editing src/lib.rs recompiles the crate without it.
//!
//! Builds a copy of the crate with `cargo build -v --offline` in a directory kept under
//! `CARGO_TARGET_TMPDIR`, so only the first run ever compiles the dependencies.

use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

/// Builds and returns whether dub's build script ran, and whether dub itself was compiled.
fn build(dir: &Path) -> (bool, bool) {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // Without TLS (irrelevant here), so the first build skips compiling aws-lc.
        .args([
            "build",
            "-v",
            "--offline",
            "--no-default-features",
            "-p",
            "dub",
            "--target-dir",
        ])
        .arg(dir.join("target"))
        .current_dir(dir.join("crate"))
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build failed:\n{log}");
    let ran_script = log.lines().any(|l| {
        l.contains("Running") && l.contains("/build/dub-") && l.contains("build-script-build")
    });
    let compiled = log
        .lines()
        .any(|l| l.contains("Running") && l.contains("--crate-name dub "));
    (ran_script, compiled)
}

fn edit(path: PathBuf, from: &str, to: &str) {
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn only_spec_edits_rerun_code_generation() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("build-rerun");
    let krate = dir.join("crate");
    let _ = std::fs::remove_dir_all(&krate);
    for file in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "openapi.yaml",
        "README.md",
    ] {
        std::fs::create_dir_all(&krate).unwrap();
        if Path::new(ROOT).join(file).exists() {
            std::fs::copy(Path::new(ROOT).join(file), krate.join(file)).unwrap();
        }
    }
    copy_tree(&Path::new(ROOT).join("src"), &krate.join("src"));
    // The other workspace members, which the manifest names.
    for member in ["xtask", "cli"] {
        copy_tree(&Path::new(ROOT).join(member), &krate.join(member));
    }

    build(&dir);
    assert_eq!(
        build(&dir),
        (false, false),
        "a second build with no edits did work"
    );

    edit(
        krate.join("openapi.yaml"),
        "description: Track a lead for a short link.",
        "description: Track a lead for a short link (edited).",
    );
    let (ran, compiled) = build(&dir);
    assert!(
        ran,
        "editing a description in openapi.yaml did not rerun build.rs"
    );
    assert!(compiled);

    edit(
        krate.join("src/lib.rs"),
        "#![warn(missing_docs)]",
        "// (edited)\n#![warn(missing_docs)]",
    );
    assert_eq!(
        build(&dir),
        (false, true),
        "editing src/lib.rs must recompile without rerunning build.rs"
    );
}
