//! The state file of `send`: the tracker's SQLite spool (its events, keyed by record identity,
//! with their outcomes), plus one table of `dub-track`'s own naming the inputs it was written
//! for, so that a run given another input's state file can say so.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, params};

/// What the file begins with when it is an SQLite database.
const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";

/// Refuses a state file written by a `dub-track` from before the spool: a JSON Lines journal
/// (records identified by path and line) that the spool cannot read and must not overwrite.
pub fn check_format(path: &Path) -> Result<(), String> {
    let mut head = Vec::with_capacity(SQLITE_HEADER.len());
    match std::fs::File::open(path) {
        Ok(f) => {
            f.take(SQLITE_HEADER.len() as u64)
                .read_to_end(&mut head)
                .map_err(|e| format!("the state file {}: {e}", path.display()))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("the state file {}: {e}", path.display())),
    }
    if head.is_empty() || head == SQLITE_HEADER {
        return Ok(());
    }
    Err(format!(
        "the state file {} was written by an earlier dub-track (a JSON Lines journal, which \
         this version replaced with an SQLite file): finish that run with the version that \
         started it, or move the file away to send every record again (records Dub does not \
         deduplicate would then be recorded again)",
        path.display()
    ))
}

/// `dub-track`'s table in the state file.
pub struct Inputs {
    conn: Connection,
    path: PathBuf,
}

impl Inputs {
    /// Opens the table (creating it) in the spool at `path`, which the tracker has opened.
    pub fn open(path: &Path) -> Result<Inputs, String> {
        let fail = |e: rusqlite::Error| format!("the state file {}: {e}", path.display());
        let conn = Connection::open(path).map_err(fail)?;
        // Other processes sharing the file write to it one commit at a time.
        conn.busy_timeout(Duration::from_secs(30)).map_err(fail)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS dub_track_inputs (identity TEXT PRIMARY KEY)",
        )
        .map_err(fail)?;
        Ok(Inputs {
            conn,
            path: path.to_owned(),
        })
    }

    /// The inputs earlier runs used the file for (canonical paths, `-` for standard input).
    pub fn known(&self) -> Result<BTreeSet<String>, String> {
        let fail = |e: rusqlite::Error| format!("the state file {}: {e}", self.path.display());
        let mut stmt = self
            .conn
            .prepare("SELECT identity FROM dub_track_inputs")
            .map_err(fail)?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(fail)?;
        rows.collect::<Result<_, _>>().map_err(fail)
    }

    /// Records that the file is used for `inputs` too.
    pub fn add(&self, inputs: &[String]) -> Result<(), String> {
        let fail = |e: rusqlite::Error| format!("the state file {}: {e}", self.path.display());
        for identity in inputs {
            self.conn
                .execute(
                    "INSERT OR IGNORE INTO dub_track_inputs (identity) VALUES (?1)",
                    params![identity],
                )
                .map_err(fail)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_of_the_earlier_format_is_refused_and_sqlite_or_nothing_is_not() {
        let dir = std::env::temp_dir().join(format!("dub-track-state-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let journal = dir.join("old.dub-state");
        std::fs::write(
            &journal,
            "{\"key\":\"/tmp/x.jsonl:3:0123456789abcdef\",\"outcome\":\"delivered\"}\n",
        )
        .unwrap();
        let e = check_format(&journal).unwrap_err();
        assert!(e.contains("earlier dub-track"), "{e}");
        assert!(check_format(&dir.join("missing")).is_ok());
        let db = dir.join("new.dub-state");
        let _ = std::fs::remove_file(&db);
        let inputs = Inputs::open(&db).unwrap();
        inputs.add(&["/a".into(), "/a".into(), "-".into()]).unwrap();
        assert_eq!(inputs.known().unwrap().len(), 2);
        assert!(check_format(&db).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
