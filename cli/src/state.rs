//! What `send` remembers between runs: which records reached an end, so that running the same
//! command again after an interruption sends only the rest.
//!
//! The state is an append-only journal of JSON lines, one per record that reached an end
//! (`{"key":…,"outcome":"delivered"}`), plus a `"started"` line written (and fsynced) before a
//! record Dub does not deduplicate is handed to the tracker, and a `"released"` line if the run
//! then stopped before sending it (a `"started"` line alone means it may have been sent). Lines are only ever appended, each
//! with a single `write` on a file opened for appending, so a crash or `kill -9` leaves every
//! complete line intact; a torn last line (power loss) is ignored on reading. Outcomes are
//! written as they happen and fsynced in batches ([`StateStore::sync`]); a delivered record
//! whose line was lost is merely sent again, and Dub deduplicates it, because only records Dub
//! deduplicates are sent without a fsynced `"started"` line first.
//!
//! The journal also names the inputs it was written for (`{"inputs":[…]}`, their canonical
//! paths), so that a run given another input's state file can say so.
//!
//! `send` uses the journal only through [`StateStore`], so that the tracker's own spool can take
//! its place later without touching the rest of the command.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::input::Key;

/// Where a record got to in an earlier run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mark {
    /// Handed over for sending, with no end recorded: only written for records Dub does not
    /// deduplicate, which a rerun must then report as uncertain instead of sending again.
    Started,
    /// Handed back unsent after a `Started`: the tracker stopped before any attempt, so the
    /// record is as good as never started.
    Released,
    /// Dub recorded it.
    Delivered,
    /// Dub refused it (or it was invalid): certainly not recorded.
    Failed,
    /// It may or may not have been recorded, and sending it again could count it twice.
    Uncertain,
}

impl Mark {
    /// Whether a record with this mark is done with: a rerun skips it.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Mark::Started | Mark::Released)
    }
}

/// What an earlier run left for one record.
#[derive(Debug, Clone, PartialEq)]
pub struct Prior {
    /// Its last mark.
    pub mark: Mark,
    /// The error of a failed or uncertain record, as written to the `--failed` file.
    pub error: Option<Value>,
}

/// One line of the journal.
#[derive(Debug, Serialize, Deserialize)]
struct Line {
    key: String,
    outcome: Mark,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<Value>,
}

/// The line naming the inputs a journal was written for.
#[derive(Debug, Serialize, Deserialize)]
struct InputsLine {
    inputs: Vec<String>,
}

/// The interface `send` keeps its progress through.
pub trait StateStore: Send + Sync {
    /// The inputs earlier runs used this state for (canonical paths, `-` for standard input).
    fn inputs(&self) -> BTreeSet<String>;
    /// How many records earlier runs recorded.
    fn len(&self) -> usize;
    /// Records that this state is used for `inputs` too.
    fn add_inputs(&self, inputs: &[String]) -> io::Result<()>;
    /// What an earlier run recorded for `key`, if anything.
    fn prior(&self, key: &str) -> Option<Prior>;
    /// Records that the record `key`, which Dub does not deduplicate, is about to be sent; it is
    /// on disk when this returns.
    fn started(&self, key: &str) -> io::Result<()>;
    /// Records that a record marked [`started`](Self::started) was not sent after all (the run
    /// stopped before its turn), so that the next run sends it instead of calling it uncertain.
    fn released(&self, key: &str) -> io::Result<()>;
    /// Records the end a record reached. It survives a crash of this process at once, and a
    /// crash of the machine after the next [`sync`](Self::sync).
    fn finished(&self, key: &str, mark: Mark, error: Option<&Value>) -> io::Result<()>;
    /// Makes everything recorded so far durable.
    fn sync(&self) -> io::Result<()>;
}

/// No state at all (standard input without `--state`): every run sends everything.
#[derive(Debug, Default)]
pub struct NoState;

impl StateStore for NoState {
    fn inputs(&self) -> BTreeSet<String> {
        BTreeSet::new()
    }
    fn len(&self) -> usize {
        0
    }
    fn add_inputs(&self, _inputs: &[String]) -> io::Result<()> {
        Ok(())
    }
    fn prior(&self, _key: &str) -> Option<Prior> {
        None
    }
    fn started(&self, _key: &str) -> io::Result<()> {
        Ok(())
    }
    fn released(&self, _key: &str) -> io::Result<()> {
        Ok(())
    }
    fn finished(&self, _key: &str, _mark: Mark, _error: Option<&Value>) -> io::Result<()> {
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The append-only journal file.
#[derive(Debug)]
pub struct Journal {
    file: Mutex<File>,
    prior: HashMap<String, Prior>,
    inputs: Mutex<BTreeSet<String>>,
}

/// Why the journal could not be opened.
#[derive(Debug)]
pub enum OpenError {
    /// Another process holds the state file (another `send` of the same files).
    Locked(PathBuf),
    /// The file could not be opened or read.
    Io(PathBuf, io::Error),
    /// The file was written by an earlier `dub-track`, whose record identities differ.
    Outdated(PathBuf),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Locked(p) => write!(
                f,
                "the state file {} is in use by another dub-track process; give this one its \
                 own --state, or wait for the other to finish",
                p.display()
            ),
            OpenError::Io(p, e) => write!(f, "the state file {}: {e}", p.display()),
            OpenError::Outdated(p) => write!(
                f,
                "the state file {} was written by an earlier dub-track, which identified records \
                 by their line numbers: finish that run with the version that started it, or \
                 move the file away to send every record again (records Dub does not deduplicate \
                 would then be recorded again)",
                p.display()
            ),
        }
    }
}

impl Journal {
    /// Opens (or creates) the journal at `path`, reads what earlier runs recorded, and locks it
    /// against other processes: two runs sharing one journal could both send a record that
    /// neither had finished.
    pub fn open(path: &Path) -> Result<Journal, OpenError> {
        let io_err = |e| OpenError::Io(path.to_path_buf(), e);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(OpenError::Locked(path.to_path_buf()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let mut prior = HashMap::new();
        let mut inputs = BTreeSet::new();
        let mut ends_cleanly = true;
        let mut reader = BufReader::new(&file);
        let mut line = Vec::new();
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line).map_err(io_err)? == 0 {
                break;
            }
            ends_cleanly = line.last() == Some(&b'\n');
            // A torn or foreign line tells nothing reliable; the records it would have named are
            // treated as never sent, which is safe for every record but a started unsafe one,
            // and that one's "started" line was fsynced before it was sent.
            let Ok(entry) = serde_json::from_slice::<Line>(&line) else {
                if let Ok(names) = serde_json::from_slice::<InputsLine>(&line) {
                    inputs.extend(names.inputs);
                }
                continue;
            };
            if !Key::is_key(&entry.key) {
                return Err(OpenError::Outdated(path.to_path_buf()));
            }
            let keep_terminal = prior
                .get(&entry.key)
                .is_some_and(|p: &Prior| p.mark.is_terminal() && !entry.outcome.is_terminal());
            if keep_terminal {
                continue;
            }
            if entry.outcome == Mark::Released {
                prior.remove(&entry.key);
            } else {
                prior.insert(
                    entry.key,
                    Prior {
                        mark: entry.outcome,
                        error: entry.error,
                    },
                );
            }
        }
        drop(reader);
        if !ends_cleanly {
            // Close a torn last line, or the next line appended would be glued to it and lost.
            (&file).write_all(b"\n").map_err(io_err)?;
        }
        Ok(Journal {
            file: Mutex::new(file),
            prior,
            inputs: Mutex::new(inputs),
        })
    }

    fn append(&self, line: &impl Serialize) -> io::Result<()> {
        let mut bytes = serde_json::to_vec(line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        // One write of the whole line on an O_APPEND file: a killed process never leaves half a
        // line behind, and lines of concurrent writers in this process never interleave.
        (&*file).write_all(&bytes)
    }
}

impl StateStore for Journal {
    fn inputs(&self) -> BTreeSet<String> {
        self.inputs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn len(&self) -> usize {
        self.prior.len()
    }

    fn add_inputs(&self, names: &[String]) -> io::Result<()> {
        let mut known = self.inputs.lock().unwrap_or_else(PoisonError::into_inner);
        let new: Vec<String> = names
            .iter()
            .filter(|n| !known.contains(*n))
            .cloned()
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        self.append(&InputsLine {
            inputs: new.clone(),
        })?;
        known.extend(new);
        Ok(())
    }

    fn prior(&self, key: &str) -> Option<Prior> {
        self.prior.get(key).cloned()
    }

    fn started(&self, key: &str) -> io::Result<()> {
        self.append(&Line {
            key: key.to_owned(),
            outcome: Mark::Started,
            error: None,
        })?;
        self.sync()
    }

    fn released(&self, key: &str) -> io::Result<()> {
        self.append(&Line {
            key: key.to_owned(),
            outcome: Mark::Released,
            error: None,
        })
    }

    fn finished(&self, key: &str, mark: Mark, error: Option<&Value>) -> io::Result<()> {
        self.append(&Line {
            key: key.to_owned(),
            outcome: mark,
            error: error.cloned(),
        })
    }

    fn sync(&self) -> io::Result<()> {
        // A clone of the handle, so that a slow fsync does not hold up writers.
        let file = self
            .file
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_clone()?;
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0000000000000000000000000000000a-0";
    const B: &str = "0000000000000000000000000000000b-0";
    const C: &str = "0000000000000000000000000000000c-0";
    const D: &str = "0000000000000000000000000000000d-0";

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dub-track-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        let _ = std::fs::remove_file(&p);
        p
    }

    #[test]
    fn remembers_ends_and_starts_across_opens() {
        let p = temp("j1");
        {
            let j = Journal::open(&p).unwrap();
            j.started(A).unwrap();
            j.finished(B, Mark::Delivered, None).unwrap();
            j.started(C).unwrap();
            j.finished(C, Mark::Failed, Some(&serde_json::json!({"x": 1})))
                .unwrap();
            j.sync().unwrap();
        }
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.prior(A).unwrap().mark, Mark::Started);
        assert_eq!(j.prior(B).unwrap().mark, Mark::Delivered);
        let c = j.prior(C).unwrap();
        assert_eq!(c.mark, Mark::Failed);
        assert_eq!(c.error, Some(serde_json::json!({"x": 1})));
        assert!(j.prior(D).is_none());
    }

    #[test]
    fn a_released_start_is_forgotten_but_an_end_is_not() {
        let p = temp("j4");
        {
            let j = Journal::open(&p).unwrap();
            j.started(A).unwrap();
            j.released(A).unwrap();
            j.finished(B, Mark::Uncertain, None).unwrap();
            j.released(B).unwrap();
            j.sync().unwrap();
        }
        let j = Journal::open(&p).unwrap();
        assert!(j.prior(A).is_none());
        assert_eq!(j.prior(B).unwrap().mark, Mark::Uncertain);
    }

    #[test]
    fn a_torn_last_line_is_ignored() {
        let p = temp("j2");
        std::fs::write(
            &p,
            format!("{{\"key\":\"{A}\",\"outcome\":\"delivered\"}}\n{{\"key\":\"{B}\",\"outc"),
        )
        .unwrap();
        let j = Journal::open(&p).unwrap();
        assert_eq!(j.prior(A).unwrap().mark, Mark::Delivered);
        assert!(j.prior(B).is_none());
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_it() {
        let p = temp("j3");
        let _first = Journal::open(&p).unwrap();
        assert!(matches!(Journal::open(&p), Err(OpenError::Locked(_))));
    }

    #[test]
    fn inputs_are_remembered() {
        let p = temp("j5");
        {
            let j = Journal::open(&p).unwrap();
            j.add_inputs(&["/x.jsonl".into()]).unwrap();
            j.add_inputs(&["/x.jsonl".into(), "-".into()]).unwrap();
        }
        let j = Journal::open(&p).unwrap();
        assert_eq!(
            j.inputs().into_iter().collect::<Vec<_>>(),
            ["-".to_owned(), "/x.jsonl".to_owned()]
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 2);
    }

    #[test]
    fn a_journal_of_line_numbered_keys_is_refused() {
        let p = temp("j6");
        std::fs::write(
            &p,
            "{\"key\":\"/tmp/x.jsonl:3:0123456789abcdef\",\"outcome\":\"delivered\"}\n",
        )
        .unwrap();
        let e = Journal::open(&p).unwrap_err();
        assert!(matches!(e, OpenError::Outdated(_)), "{e}");
        assert!(e.to_string().contains("earlier dub-track"), "{e}");
    }
}
