//! What the command-line tests share: a scratch directory, the built binary run against a
//! `MockDub` in the test's own process, and its summary line read back.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use dub::mock::MockDub;
use tokio::process::Command;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dub-track");

/// A directory of its own for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "dub-track-test-{}-{}-{name}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, text).expect("write input");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `dub-track ARGS` with the mock's URL and token, run in `dir`, its output piped.
pub fn command(mock: &MockDub, dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("DUB_API_KEY", mock.token())
        .env("DUB_BASE_URL", mock.url())
        // The library's log lines at their default level, whatever the caller's shell sets.
        .env_remove("DUB_TRACK_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `dub-track ARGS` to its end (at most 60 s).
pub async fn run(mock: &MockDub, dir: &Path, args: &[&str]) -> Run {
    let child = command(mock, dir, args).spawn().expect("spawn dub-track");
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("dub-track did not finish within 60 s")
        .expect("dub-track output");
    Run::from(out, mock.token())
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(out: Output, token: &str) -> Run {
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        // The token is never printed, whatever happens.
        assert!(
            !run.stdout.contains(token) && !run.stderr.contains(token),
            "the token was printed: {run:?}"
        );
        run
    }

    /// The numbers of the summary line (`delivered=N failed=N ...`), the last line of stdout.
    pub fn summary(&self) -> HashMap<String, f64> {
        let line = self.stdout.lines().last().unwrap_or_default();
        let fields: HashMap<String, f64> = line
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect();
        for name in [
            "delivered",
            "failed",
            "uncertain",
            "skipped",
            "rate_limited",
            "elapsed_s",
        ] {
            assert!(fields.contains_key(name), "no {name} in {line:?}: {self:?}");
        }
        fields
    }

    pub fn count(&self, name: &str) -> u64 {
        self.summary()[name] as u64
    }
}

/// JSON Lines text of the given records.
pub fn jsonl(records: &[serde_json::Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}
