//! The durable spool (feature `spool`): a tracker's queue in a SQLite file, so events survive
//! `kill -9`, power loss and restarts, and several processes on one host can share it.
//!
//! Why SQLite: with WAL and `synchronous=FULL` a committed transaction survives power loss,
//! several processes on one host may open one file, and the file can be read with the `sqlite3`
//! tool. The pure-Rust stores fall short here: redb allows one process at a time, fjall does not
//! fsync by default, sled has had no stable release since 2021.
//!
//! - **Hand-over** goes to one writer thread, which commits whatever has arrived meanwhile in a
//!   single transaction (group commit): one fsync for many events. A hand-over completes once
//!   its event is committed.
//! - **Claims** mark rows in flight for this tracker (`owner`) in an immediate transaction, so
//!   two processes never claim the same row. Only the oldest undelivered row of a customer can
//!   be claimed, which keeps a customer's events in hand-over order across processes too.
//! - **Owners** write a heartbeat. Rows claimed by an owner that is gone (its process no longer
//!   exists, or its heartbeat is a minute old) were in flight when it died: possibly sent. Those
//!   Dub deduplicates go back to the queue; the others end uncertain, never resent.
//! - **Keys** of terminal rows are kept with the outcome, so handing a key over again (a rerun
//!   of an import) answers with the stored outcome instead of sending twice. Terminal rows
//!   without a key are deleted.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::Notify;

use super::event::{Event, EventId};
use super::outcome::{
    HandOver, HandOverError, HandOverErrorKind, HandOverResult, Outcome, Receipt, Response,
};
use super::receipts::Receipts;
use super::store::{BlockingStore, Claimed, Left, StoreError, Terminal};
use crate::Error;

/// How often an owner proves it is alive, and how old a heartbeat may be before its claims
/// are taken back.
const HEARTBEAT: Duration = Duration::from_secs(5);
const STALE_MS: u64 = 60_000;
/// The most events one commit takes; and how many hand-overs may wait for the writer.
const MAX_BATCH: usize = 4_096;
const WRITER_QUEUE: usize = 16_384;

const PENDING: i64 = 0;
const CLAIMED: i64 = 1;

/// The tables, created in one immediate transaction (see [`prepare`]) so that the count of
/// undelivered rows is taken and its triggers created with no other process writing in between.
/// Columns added since the first version (`events.head`, `owners.process`) are added to older
/// files by [`prepare`] before the rest of this runs.
const TABLES: &str = "
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    key         TEXT UNIQUE,
    customer    TEXT NOT NULL,
    event       BLOB NOT NULL,
    dedup       INTEGER NOT NULL,
    created_ms  INTEGER NOT NULL,
    due_ms      INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    maybe_sent  INTEGER NOT NULL DEFAULT 0,
    state       INTEGER NOT NULL DEFAULT 0, -- 0 pending, 1 claimed, 2 delivered, 3 failed, 4 uncertain
    owner       TEXT,
    outcome     BLOB,
    head        INTEGER NOT NULL DEFAULT 0  -- 1: the oldest undelivered row of its customer
);
CREATE TABLE IF NOT EXISTS owners (
    owner         TEXT PRIMARY KEY,
    pid           INTEGER NOT NULL,
    heartbeat_ms  INTEGER NOT NULL,
    process       TEXT  -- boot id, PID namespace and start time of the owner's process
);
";

/// The columns a file must have to be a spool (those of the first version).
const EVENTS_COLUMNS: [&str; 12] = [
    "id",
    "key",
    "customer",
    "event",
    "dedup",
    "created_ms",
    "due_ms",
    "attempts",
    "maybe_sent",
    "state",
    "owner",
    "outcome",
];

/// Marks the heads of customers' queues in a file written before `head` existed.
const BACKFILL_HEADS: &str = "
UPDATE events SET head = 1
WHERE state IN (0, 1) AND id = (
    SELECT MIN(p.id) FROM events p WHERE p.customer = events.customer AND p.state IN (0, 1));
";

const INDEXES_AND_TRIGGERS: &str = "
CREATE INDEX IF NOT EXISTS events_due ON events (state, due_ms, id);
CREATE INDEX IF NOT EXISTS events_customer ON events (customer, id) WHERE state IN (0, 1);
-- The claimable rows: heads of their customers' queues, pending. A claim reads this index
-- from its start, so its cost does not grow with a customer's backlog.
CREATE INDEX IF NOT EXISTS events_heads ON events (due_ms, id) WHERE head = 1 AND state = 0;
-- The number of rows in state 0 or 1, kept by triggers: the writer checks the capacity on
-- every commit, and counting the rows instead costs time in proportion to the backlog.
CREATE TABLE IF NOT EXISTS undelivered (n INTEGER NOT NULL);
INSERT INTO undelivered (n)
    SELECT (SELECT COUNT(*) FROM events WHERE state IN (0, 1))
    WHERE NOT EXISTS (SELECT 1 FROM undelivered);
CREATE TRIGGER IF NOT EXISTS undelivered_insert AFTER INSERT ON events
    WHEN NEW.state IN (0, 1)
    BEGIN UPDATE undelivered SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS undelivered_delete AFTER DELETE ON events
    WHEN OLD.state IN (0, 1)
    BEGIN UPDATE undelivered SET n = n - 1; END;
CREATE TRIGGER IF NOT EXISTS undelivered_update AFTER UPDATE OF state ON events
    WHEN (OLD.state IN (0, 1)) != (NEW.state IN (0, 1))
    BEGIN UPDATE undelivered SET n = n + (NEW.state IN (0, 1)) - (OLD.state IN (0, 1)); END;
-- `head` is kept by triggers too, so that every process on the file (whatever version of this
-- crate it runs) keeps it right. A row stops being undelivered only from its customer's head.
CREATE TRIGGER IF NOT EXISTS head_insert AFTER INSERT ON events
    WHEN NEW.state IN (0, 1) AND NOT EXISTS (
        SELECT 1 FROM events p
        WHERE p.customer = NEW.customer AND p.state IN (0, 1) AND p.id < NEW.id)
    BEGIN UPDATE events SET head = 1 WHERE id = NEW.id; END;
CREATE TRIGGER IF NOT EXISTS head_update AFTER UPDATE OF state ON events
    WHEN OLD.state IN (0, 1) AND NEW.state NOT IN (0, 1)
    BEGIN
        UPDATE events SET head = 0 WHERE id = NEW.id;
        UPDATE events SET head = 1 WHERE id = (
            SELECT MIN(id) FROM events WHERE customer = NEW.customer AND state IN (0, 1));
    END;
CREATE TRIGGER IF NOT EXISTS head_delete AFTER DELETE ON events
    WHEN OLD.state IN (0, 1)
    BEGIN
        UPDATE events SET head = 1 WHERE id = (
            SELECT MIN(id) FROM events WHERE customer = OLD.customer AND state IN (0, 1));
    END;
";

/// The heads of customers' queues that are due: a customer's oldest undelivered row, when it
/// is pending (not in flight) and its time has come. `INDEXED BY`: without statistics SQLite
/// would rather walk `events_due` through every pending row of a long backlog.
const CLAIMABLE: &str = "
SELECT id, key, event, attempts, created_ms, maybe_sent
FROM events INDEXED BY events_heads
WHERE head = 1 AND state = 0 AND due_ms <= ?1
ORDER BY due_ms, id
LIMIT ?2";

fn terminal_code(t: Terminal) -> i64 {
    match t {
        Terminal::Delivered => 2,
        Terminal::Failed => 3,
        Terminal::Uncertain => 4,
    }
}

/// One hand-over on its way to the writer.
struct Insert {
    key: Option<String>,
    event: Event,
    created_ms: u64,
    reply: oneshot::Sender<HandOverResult>,
}

pub(crate) struct Spool {
    path: PathBuf,
    owner: String,
    conn: Mutex<Connection>,
    /// Taken around every write transaction of this process, on either connection.
    gate: Arc<Mutex<()>>,
    writer: Mutex<Option<SyncSender<Insert>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // Other processes on the file hold its write lock for one commit at a time.
    conn.busy_timeout(Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: a commit is on disk (WAL fsynced) before the hand-over completes.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn storage(e: impl std::fmt::Display) -> String {
    format!("spool: {e}")
}

/// Why a spool cannot be opened, in one line: what is wrong with the file, not SQLite's words
/// for it where better ones can be found.
fn diagnose(path: &Path, e: &rusqlite::Error) -> String {
    use rusqlite::ErrorCode;
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) => {
            return "it is not a SQLite database (or its first page is damaged)".into();
        }
        Some(ErrorCode::DatabaseCorrupt) => return damaged(&one_line(&e.to_string())),
        _ => {}
    }
    // SQLite says "unable to open database file" or "attempt to write a readonly database";
    // the filesystem says why.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return format!("its directory {} does not exist", dir.display());
    }
    let probe = if path.exists() {
        std::fs::OpenOptions::new().write(true).open(path).map(drop)
    } else {
        Ok(())
    }
    .and_then(|()| {
        // The spool also writes files beside it (the `-wal` and `-shm` files).
        let beside = dir.join(format!(".dub-spool-probe-{:016x}", fastrand::u64(..)));
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&beside)
            .map(|_| {
                let _ = std::fs::remove_file(&beside);
            })
    });
    match probe {
        Err(io) => format!(
            "it cannot be written: {} (the spool needs a writable file and directory)",
            io.to_string().to_lowercase()
        ),
        Ok(()) => one_line(&e.to_string()),
    }
}

fn damaged(why: &str) -> String {
    format!(
        "it is damaged ({why}): move it aside and restore it from a backup, or start a new spool"
    )
}

fn one_line(s: &str) -> String {
    let line: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.char_indices().nth(160) {
        Some((at, _)) => format!("{}...", &line[..at]),
        None => line,
    }
}

/// Refuses a file that holds something else than a spool, before anything is written to it.
fn check_is_spool(conn: &Connection) -> rusqlite::Result<Result<bool, String>> {
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
             ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if tables.is_empty() {
        return Ok(Ok(false));
    }
    let columns = |table: &str| -> rusqlite::Result<Vec<String>> {
        conn.prepare(&format!("PRAGMA table_info({table})"))?
            .query_map([], |r| r.get(1))?
            .collect()
    };
    let is_spool =
        tables.iter().any(|t| t == "events") && tables.iter().any(|t| t == "owners") && {
            let have = columns("events")?;
            EVENTS_COLUMNS.iter().all(|c| have.iter().any(|h| h == c))
        };
    if is_spool {
        return Ok(Ok(true));
    }
    let mut names = tables
        .iter()
        .take(8)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if tables.len() > 8 {
        names.push_str(", ...");
    }
    Ok(Err(format!(
        "it is not a dub spool (it has tables {names})"
    )))
}

/// `PRAGMA quick_check`: a damaged file is refused at open rather than read as empty. Its cost
/// grows with the file: about 0.1 s for 100,000 undelivered events (20 MB), 5 - 8 s for a
/// million on a 2-core VM (BENCHMARKS.md).
fn quick_check(conn: &Connection) -> rusqlite::Result<Result<(), String>> {
    let found: Vec<String> = conn
        .prepare("PRAGMA quick_check(3)")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if found.len() == 1 && found[0] == "ok" {
        return Ok(Ok(()));
    }
    let why = found
        .iter()
        .flat_map(|f| f.lines())
        .find(|l| !l.starts_with("***"))
        .unwrap_or("quick_check failed");
    Ok(Err(damaged(&one_line(why))))
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    for name in names {
        if name? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Creates the tables, or brings a file written by an earlier version up to date.
fn prepare(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(TABLES)?;
    if !has_column(&tx, "events", "head")? {
        tx.execute_batch("ALTER TABLE events ADD COLUMN head INTEGER NOT NULL DEFAULT 0;")?;
        tx.execute_batch(BACKFILL_HEADS)?;
    }
    if !has_column(&tx, "owners", "process")? {
        tx.execute_batch("ALTER TABLE owners ADD COLUMN process TEXT;")?;
    }
    tx.execute_batch(INDEXES_AND_TRIGGERS)?;
    tx.commit()
}

/// Opens and checks the file, and prepares its tables.
fn open_checked(path: &Path) -> Result<Connection, String> {
    let fail = |e: rusqlite::Error| diagnose(path, &e);
    let mut conn = Connection::open(path).map_err(fail)?;
    let existing = check_is_spool(&conn).map_err(fail)??;
    if existing {
        quick_check(&conn).map_err(fail)??;
    }
    conn.busy_timeout(Duration::from_secs(30)).map_err(fail)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(fail)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(fail)?;
    prepare(&mut conn).map_err(fail)?;
    Ok(conn)
}

/// The owners registered by this process that are alive: an owner row with this process's PID
/// (a container's service is always PID 1, so a process that died there had it too) is alive
/// only if it is one of these.
fn live_owners() -> MutexGuard<'static, HashSet<String>> {
    static LIVE: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    LIVE.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Who a process is, beyond its PID, which a restarted process may inherit: the boot, the PID
/// namespace and the process's start time, as `"<boot id> <pid namespace> <start time>"`.
#[cfg(target_os = "linux")]
fn process_identity(pid: u32) -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()?;
    Some(format!(
        "{} {} {}",
        boot.trim(),
        ns.display(),
        start_time(pid)?
    ))
}

#[cfg(not(target_os = "linux"))]
fn process_identity(_pid: u32) -> Option<String> {
    None
}

/// The start time of process `pid`, in clock ticks since boot (`/proc/<pid>/stat`, field 22).
#[cfg(target_os = "linux")]
fn start_time(pid: impl std::fmt::Display) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; it ends at the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19).map(str::to_owned)
}

fn this_process() -> Option<&'static str> {
    static ME: OnceLock<Option<String>> = OnceLock::new();
    ME.get_or_init(|| process_identity(std::process::id()))
        .as_deref()
}

/// Whether an owner is certainly gone: its heartbeat is stale, or its process is not running.
fn owner_gone(
    owner: &str,
    pid: i64,
    heartbeat_ms: i64,
    process: Option<&str>,
    now_ms: u64,
) -> bool {
    let stale = now_ms.saturating_sub(u64::try_from(heartbeat_ms).unwrap_or(0)) > STALE_MS;
    if stale {
        return true;
    }
    let me = this_process().map(|m| m.splitn(3, ' ').collect::<Vec<_>>());
    let recorded = process.map(|p| p.splitn(3, ' ').collect::<Vec<_>>());
    if let (Some(me), Some(rec)) = (&me, &recorded)
        && me.len() == 3
        && rec.len() == 3
    {
        if rec[0] != me[0] {
            // Written before the machine last booted.
            return true;
        }
        if rec[1] != me[1] {
            // Another PID namespace (another container): its PIDs mean nothing here, so only
            // the heartbeat can tell.
            return false;
        }
    }
    if u32::try_from(pid).is_ok_and(|p| p == std::process::id()) {
        // This process, or one that died with the same PID (a restarted container).
        return !live_owners().contains(owner);
    }
    match recorded {
        #[cfg(target_os = "linux")]
        Some(rec) if rec.len() == 3 => start_time(pid).is_none_or(|t| t != rec[2]),
        // An owner written by an earlier version of this crate: only its PID is known.
        _ => !process_exists(pid),
    }
}

#[cfg(target_os = "linux")]
fn process_exists(pid: i64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(not(target_os = "linux"))]
fn process_exists(_pid: i64) -> bool {
    // Without a portable check, only a stale heartbeat says an owner is gone.
    true
}

impl Spool {
    /// Opens (creating if need be) the spool at `path` for a tracker holding at most
    /// `capacity` undelivered events, and starts its writer thread, which registers the
    /// receipts of what it stores in `receipts` and rings `wake` after each commit.
    ///
    /// A file that is not a spool, is damaged, or cannot be written is refused here, with one
    /// line saying which.
    pub(crate) fn open(
        path: &Path,
        capacity: usize,
        receipts: Arc<Receipts>,
        wake: Arc<Notify>,
    ) -> Result<Spool, String> {
        let conn = open_checked(path)?;
        let owner = format!("{}-{:016x}", std::process::id(), fastrand::u64(..));
        let now = crate::clock::now_ms();
        live_owners().insert(owner.clone());
        let registered = conn.execute(
            "INSERT OR REPLACE INTO owners (owner, pid, heartbeat_ms, process)
             VALUES (?1, ?2, ?3, ?4)",
            params![owner, std::process::id(), now as i64, this_process()],
        );
        let writer_conn = registered.and_then(|_| connect(path));
        let writer_conn = match writer_conn {
            Ok(c) => c,
            Err(e) => {
                live_owners().remove(&owner);
                return Err(diagnose(path, &e));
            }
        };
        let gate = Arc::new(Mutex::new(()));
        let (tx, rx) = mpsc::sync_channel(WRITER_QUEUE);
        let writer = Writer {
            conn: writer_conn,
            gate: gate.clone(),
            owner: owner.clone(),
            capacity,
            receipts,
            wake,
        };
        let thread = std::thread::Builder::new()
            .name("dub-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| {
                live_owners().remove(&owner);
                format!("its writer thread cannot start: {e}")
            })?;
        Ok(Spool {
            path: path.to_owned(),
            owner,
            conn: Mutex::new(conn),
            gate,
            writer: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection, and this process's turn to write: the writer thread and the
    /// dispatcher take turns on a mutex, which hands over as soon as a transaction ends;
    /// SQLite's busy handler (for other processes) would sleep up to 100 ms at a time.
    fn lock_to_write(&self) -> (MutexGuard<'_, Connection>, MutexGuard<'_, ()>) {
        let conn = self.lock();
        (conn, lock_gate(&self.gate))
    }

    /// Queues a hand-over for the writer; never blocks.
    pub(crate) fn hand_over(&self, key: Option<String>, event: Event, created_ms: u64) -> HandOver {
        let (reply, handover) = HandOver::pending();
        let insert = Insert {
            key,
            event,
            created_ms,
            reply,
        };
        let writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let refused = match writer.as_ref() {
            None => Some((insert, HandOverErrorKind::Stopped, "the spool is closed")),
            Some(tx) => match tx.try_send(insert) {
                Ok(()) => None,
                Err(TrySendError::Full(insert)) => Some((
                    insert,
                    HandOverErrorKind::Full,
                    "the spool's writer is behind: too many hand-overs waiting for a commit",
                )),
                Err(TrySendError::Disconnected(insert)) => Some((
                    insert,
                    HandOverErrorKind::Storage,
                    "the spool's writer stopped",
                )),
            },
        };
        if let Some((insert, kind, detail)) = refused {
            let _ = insert.reply.send(Err(
                HandOverError::new(kind, Some(insert.event)).with_detail(detail)
            ));
        }
        handover
    }

    /// Takes back rows claimed by owners that are gone: the deduplicated ones go back to the
    /// queue (possibly sent), the others end uncertain; those are returned, to be announced.
    pub(crate) fn recover(&self) -> Result<Vec<Claimed>, String> {
        let (mut conn, _gate) = self.lock_to_write();
        let now = crate::clock::now_ms();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        tx.execute(
            "UPDATE owners SET heartbeat_ms = ?2 WHERE owner = ?1",
            params![self.owner, now as i64],
        )
        .map_err(storage)?;
        let owners: Vec<(String, i64, i64, Option<String>)> = {
            let mut stmt = tx
                .prepare("SELECT owner, pid, heartbeat_ms, process FROM owners WHERE owner != ?1")
                .map_err(storage)?;
            stmt.query_map(params![self.owner], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .map_err(storage)?
            .collect::<Result<_, _>>()
            .map_err(storage)?
        };
        for (owner, pid, heartbeat, process) in owners {
            if owner_gone(&owner, pid, heartbeat, process.as_deref(), now) {
                tx.execute("DELETE FROM owners WHERE owner = ?1", params![owner])
                    .map_err(storage)?;
            }
        }
        // Claims whose owner is no longer registered: in flight when it died.
        let orphan = "state = 1 AND (owner IS NULL OR owner NOT IN (SELECT owner FROM owners))";
        tx.execute(
            &format!(
                "UPDATE events SET state = 0, maybe_sent = 1, owner = NULL WHERE {orphan} AND dedup = 1"
            ),
            [],
        )
        .map_err(storage)?;
        let uncertain: Vec<Claimed> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT id, key, event, attempts, created_ms, maybe_sent FROM events WHERE {orphan}"
                ))
                .map_err(storage)?;
            let rows = stmt
                .query_map([], row_to_claimed)
                .map_err(storage)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage)?;
            rows.into_iter().filter_map(decoded).collect()
        };
        if !uncertain.is_empty() {
            let stored = serde_json::to_vec(&Error::interrupted().to_json()).unwrap_or_default();
            tx.execute(
                &format!("UPDATE events SET state = 4, owner = NULL, outcome = ?1 WHERE {orphan}"),
                params![stored],
            )
            .map_err(storage)?;
            tx.execute("DELETE FROM events WHERE state >= 2 AND key IS NULL", [])
                .map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        Ok(uncertain)
    }

    pub(crate) fn claim(&self, max: usize, now_ms: u64) -> Result<Vec<Claimed>, String> {
        let (mut conn, _gate) = self.lock_to_write();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        let rows = {
            let mut stmt = tx.prepare_cached(CLAIMABLE).map_err(storage)?;
            stmt.query_map(params![now_ms as i64, max as i64], row_to_claimed)
                .map_err(storage)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(storage)?
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for row in rows {
            let id = row.0;
            match decoded(row) {
                Some(c) => {
                    tx.execute(
                        "UPDATE events SET state = 1, owner = ?2 WHERE id = ?1",
                        params![id.0 as i64, self.owner],
                    )
                    .map_err(storage)?;
                    claimed.push(c);
                }
                None => {
                    // Written by a version of this crate that had other fields: unreadable,
                    // so never sent; kept, marked failed, for a person to look at.
                    let why = serde_json::json!({
                        "kind": "Decode",
                        "message": "the spooled event could not be read back; it was not sent",
                    });
                    tx.execute(
                        "UPDATE events SET state = 3, outcome = ?2 WHERE id = ?1",
                        params![id.0 as i64, serde_json::to_vec(&why).unwrap_or_default()],
                    )
                    .map_err(storage)?;
                }
            }
        }
        tx.commit().map_err(storage)?;
        Ok(claimed)
    }

    pub(crate) fn finish(&self, done: Vec<(EventId, Terminal, Vec<u8>)>) -> Result<(), String> {
        let (mut conn, _gate) = self.lock_to_write();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(storage)?;
        for (id, terminal, outcome) in done {
            tx.execute(
                "UPDATE events SET state = ?2, outcome = ?3, owner = NULL WHERE id = ?1",
                params![id.0 as i64, terminal_code(terminal), outcome],
            )
            .map_err(storage)?;
            tx.execute(
                "DELETE FROM events WHERE id = ?1 AND key IS NULL",
                params![id.0 as i64],
            )
            .map_err(storage)?;
        }
        tx.commit().map_err(storage)
    }

    pub(crate) fn reschedule(
        &self,
        id: EventId,
        due_ms: u64,
        attempts: u32,
        maybe_sent: bool,
    ) -> Result<(), String> {
        let (conn, _gate) = self.lock_to_write();
        conn.execute(
            "UPDATE events SET state = 0, owner = NULL, due_ms = ?2, attempts = ?3,
                     maybe_sent = maybe_sent OR ?4
                 WHERE id = ?1",
            params![id.0 as i64, due_ms as i64, attempts, maybe_sent],
        )
        .map(drop)
        .map_err(storage)
    }

    /// The earliest due time of a claimable row.
    pub(crate) fn next_due(&self) -> Option<u64> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT MIN(due_ms) FROM events INDEXED BY events_heads
                 WHERE head = 1 AND state = 0",
            )
            .ok()?;
        stmt.query_row([], |r| r.get::<_, Option<i64>>(0))
            .ok()
            .flatten()
            .map(|due| u64::try_from(due).unwrap_or(0))
    }

    /// (queued, in flight for this tracker, creation time of the oldest undelivered), or why
    /// the spool could not be read: never zeros in place of what cannot be known.
    pub(crate) fn counts(&self) -> Result<(u64, u64, Option<u64>), String> {
        let conn = self.lock();
        let counts = conn.query_row(
            "SELECT
                 COALESCE(SUM(state = 0), 0),
                 COALESCE(SUM(state = 1 AND owner = ?1), 0),
                 MIN(created_ms)
             FROM events WHERE state IN (0, 1)",
            params![self.owner],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                ))
            },
        );
        match counts {
            Ok((queued, in_flight, oldest)) => Ok((
                u64::try_from(queued).unwrap_or(0),
                u64::try_from(in_flight).unwrap_or(0),
                oldest.and_then(|o| u64::try_from(o).ok()),
            )),
            Err(e) => Err(format!(
                "the spool at {} could not be read: {}",
                self.path.display(),
                one_line(&e.to_string())
            )),
        }
    }

    /// Of `ids`, those whose rows are settled (another process sharing the file settled
    /// them), with their stored outcomes.
    pub(crate) fn settled(&self, ids: &[EventId]) -> Result<Vec<(EventId, Outcome)>, String> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT state, outcome FROM events WHERE id = ?1 AND state >= 2")
            .map_err(storage)?;
        let mut settled = Vec::new();
        for &id in ids {
            let row: Option<(i64, Option<Vec<u8>>)> = stmt
                .query_row(params![id.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(storage)?;
            if let Some((state, outcome)) = row {
                settled.push((id, stored_outcome(state, outcome)));
            }
        }
        Ok(settled)
    }

    /// Whether a row holds `key`, whatever its state.
    pub(crate) fn has_key(&self, key: &str) -> Result<bool, String> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT 1 FROM events WHERE key = ?1")
            .map_err(storage)?;
        stmt.exists(params![key]).map_err(storage)
    }

    /// Stops the writer after it has committed what it holds.
    pub(crate) fn close(&self) {
        self.writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        // The writer itself may drop the last handle to the tracker; it cannot join itself.
        if let Some(thread) = thread
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.close();
        // A clean exit leaves no claims behind (shutdown settles or requeues them); forgetting
        // the owner lets another process take over any at once.
        let conn = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        let _ = conn.execute(
            "UPDATE events SET state = 0, owner = NULL, maybe_sent = 1 WHERE state = 1 AND owner = ?1 AND dedup = 1",
            params![self.owner],
        );
        let _ = conn.execute("DELETE FROM owners WHERE owner = ?1", params![self.owner]);
        live_owners().remove(&self.owner);
    }
}

type Row = (EventId, Option<String>, Vec<u8>, u32, u64, bool);

fn row_to_claimed(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        EventId(u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0)),
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
        r.get(5)?,
    ))
}

fn decoded((id, key, event, attempts, created_ms, maybe_sent): Row) -> Option<Claimed> {
    let event = serde_json::from_slice(&event).ok()?;
    Some(Claimed {
        id,
        key,
        event,
        attempts,
        created_ms,
        maybe_sent,
    })
}

/// An outcome read back from the spool, for a key handed over again.
fn stored_outcome(state: i64, outcome: Option<Vec<u8>>) -> Outcome {
    let value: serde_json::Value = outcome
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    match state {
        2 => Outcome::Delivered(Response::Raw(value)),
        3 => Outcome::Failed(Error::from_stored(&value)),
        _ => Outcome::Uncertain(Error::from_stored(&value)),
    }
}

fn lock_gate(gate: &Mutex<()>) -> MutexGuard<'_, ()> {
    gate.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The thread that commits hand-overs, many per transaction.
struct Writer {
    conn: Connection,
    gate: Arc<Mutex<()>>,
    owner: String,
    capacity: usize,
    receipts: Arc<Receipts>,
    wake: Arc<Notify>,
}

/// What a hand-over became inside a commit.
enum Written {
    New(EventId, Receipt),
    /// The key was handed over before and is still undelivered.
    Pending(Receipt),
    /// The key was handed over before and its outcome is known.
    Done(EventId, Outcome),
    Full(Event),
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Insert>) {
        let mut last_beat = std::time::Instant::now();
        loop {
            let first = match rx.recv_timeout(HEARTBEAT) {
                Ok(insert) => insert,
                Err(RecvTimeoutError::Timeout) => {
                    self.heartbeat();
                    last_beat = std::time::Instant::now();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(insert) => batch.push(insert),
                    Err(_) => break,
                }
            }
            self.commit(batch);
            if last_beat.elapsed() >= HEARTBEAT {
                self.heartbeat();
                last_beat = std::time::Instant::now();
            }
        }
    }

    fn heartbeat(&self) {
        let _gate = lock_gate(&self.gate);
        let _ = self.conn.execute(
            "INSERT OR REPLACE INTO owners (owner, pid, heartbeat_ms, process)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                self.owner,
                std::process::id(),
                crate::clock::now_ms() as i64,
                this_process()
            ],
        );
    }

    fn write(&mut self, batch: &mut [Insert]) -> rusqlite::Result<Vec<Written>> {
        let _gate = lock_gate(&self.gate);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut undelivered: u64 = tx
            .query_row("SELECT n FROM undelivered", [], |r| r.get::<_, i64>(0))?
            .try_into()
            .unwrap_or(0);
        let mut written = Vec::with_capacity(batch.len());
        // Keys repeated within the batch map to the first.
        let mut in_batch: HashMap<String, EventId> = HashMap::new();
        for insert in batch.iter_mut() {
            if let Some(key) = &insert.key {
                if let Some(&id) = in_batch.get(key) {
                    written.push(Written::Pending(self.receipts.register(id)));
                    continue;
                }
                let existing: Option<(i64, i64, Option<Vec<u8>>)> = tx
                    .query_row(
                        "SELECT id, state, outcome FROM events WHERE key = ?1",
                        params![key],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                if let Some((id, state, outcome)) = existing {
                    let id = EventId(u64::try_from(id).unwrap_or(0));
                    written.push(if state <= CLAIMED {
                        Written::Pending(self.receipts.register(id))
                    } else {
                        Written::Done(id, stored_outcome(state, outcome))
                    });
                    continue;
                }
            }
            if undelivered >= self.capacity as u64 {
                written.push(Written::Full(insert.event.clone()));
                continue;
            }
            let bytes = serde_json::to_vec(&insert.event)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.prepare_cached(
                "INSERT INTO events (key, customer, event, dedup, created_ms, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?
            .execute(params![
                insert.key,
                insert.event.customer_external_id(),
                bytes,
                insert.event.is_deduplicated(),
                insert.created_ms as i64,
                PENDING,
            ])?;
            let id = EventId(u64::try_from(tx.last_insert_rowid()).unwrap_or(0));
            if let Some(key) = &insert.key {
                in_batch.insert(key.clone(), id);
            }
            undelivered += 1;
            // Registered before the commit: once committed, the row can be claimed, delivered
            // and announced at once, and its receipt must already be there to hear it.
            written.push(Written::New(id, self.receipts.register(id)));
        }
        if let Err(e) = tx.commit() {
            // Those rows never existed, and no receipt was handed out for them.
            for w in &written {
                if let Written::New(id, _) = w {
                    self.receipts.forget(*id);
                }
            }
            return Err(e);
        }
        Ok(written)
    }

    fn commit(&mut self, mut batch: Vec<Insert>) {
        match self.write(&mut batch) {
            Ok(written) => {
                #[cfg(test)]
                pause_after_commit();
                let mut any_new = false;
                for (insert, written) in batch.into_iter().zip(written) {
                    let result = match written {
                        Written::New(_, receipt) | Written::Pending(receipt) => {
                            any_new = true;
                            Ok(receipt)
                        }
                        Written::Done(id, outcome) => Ok(Receipts::ready(id, outcome)),
                        Written::Full(event) => {
                            Err(HandOverError::new(HandOverErrorKind::Full, Some(event))
                                .with_detail(format!(
                                    "{} undelivered events in the spool already",
                                    self.capacity
                                )))
                        }
                    };
                    let _ = insert.reply.send(result);
                }
                if any_new {
                    self.wake.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "dub tracker: cannot write to the spool");
                for insert in batch {
                    let _ = insert.reply.send(Err(HandOverError::new(
                        HandOverErrorKind::Storage,
                        Some(insert.event),
                    )
                    .with_detail(storage(&e))));
                }
            }
        }
    }
}

/// Tests: how long the writer waits between a commit and the hand-overs' answers, which widens
/// the window in which the dispatcher can claim and deliver a row just committed.
#[cfg(test)]
pub(crate) static PAUSE_AFTER_COMMIT_MS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

#[cfg(test)]
fn pause_after_commit() {
    let ms = PAUSE_AFTER_COMMIT_MS.load(std::sync::atomic::Ordering::Relaxed);
    if ms > 0 {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

impl BlockingStore for Spool {
    fn hand_over(&self, key: Option<String>, event: Event, created_ms: u64) -> HandOver {
        Spool::hand_over(self, key, event, created_ms)
    }

    fn close_hand_overs(&self) {
        self.close();
    }

    fn claim(&self, max: usize, now_ms: u64) -> Result<Vec<Claimed>, StoreError> {
        Ok(Spool::claim(self, max, now_ms)?)
    }

    fn finish(&self, done: Vec<(EventId, Terminal, Vec<u8>)>) -> Result<(), StoreError> {
        Ok(Spool::finish(self, done)?)
    }

    fn reschedule(
        &self,
        id: EventId,
        due_ms: u64,
        attempts: u32,
        maybe_sent: bool,
    ) -> Result<(), StoreError> {
        Ok(Spool::reschedule(self, id, due_ms, attempts, maybe_sent)?)
    }

    fn recover(&self) -> Result<Vec<Claimed>, StoreError> {
        Ok(Spool::recover(self)?)
    }

    fn left(&self) -> Result<Left, StoreError> {
        let (queued, in_flight, _) = Spool::counts(self)?;
        Ok(Left {
            undelivered: Vec::new(),
            in_store: queued + in_flight,
        })
    }

    fn next_due(&self) -> Option<u64> {
        Spool::next_due(self)
    }

    fn counts(&self) -> Result<(u64, u64, Option<u64>), StoreError> {
        Ok(Spool::counts(self)?)
    }

    fn settled(&self, ids: &[EventId]) -> Result<Vec<(EventId, Outcome)>, StoreError> {
        Ok(Spool::settled(self, ids)?)
    }

    fn has_key(&self, key: &str) -> Result<bool, StoreError> {
        Ok(Spool::has_key(self, key)?)
    }
}
