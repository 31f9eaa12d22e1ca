//! The spool at its edges: a full disk, a damaged file, a read-only filesystem, a file that is
//! not a spool, and an owner whose PID a restarted process inherited.
//!
//! The full-disk and read-only tests mount a small tmpfs, which needs root (CI runs as root);
//! without it they say so on standard error and pass without checking anything.
#![cfg(all(feature = "spool", feature = "mock"))]

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::support;
use dub::mock::{Fault, MockDub, RandomFaults};
use dub::tracker::Event;

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "dub-spool-edges-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn lead(customer: &str) -> Event {
    crate::support::lead_for(customer).build().into()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop; `None` without root.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = temp_dir();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cannot mount a tmpfs (not root?): this test checks nothing here");
            return None;
        }
        Some(Tmpfs(dir))
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Log lines written under a subscriber set on this thread (the tracker's dispatcher runs on
/// the test's current-thread runtime, so its lines land here).
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn lines(&self, level: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(level))
            .map(str::to_owned)
            .collect()
    }
}

/// Writes zeros into `path` until the filesystem is full.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test]
async fn a_full_disk_backs_off_logs_once_and_writes_the_outcomes_once_it_has_room() {
    let Some(fs) = Tmpfs::mount("4m") else { return };
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let mock = MockDub::start().await.unwrap();
    // Slow answers: deliveries are in flight when the disk fills up.
    mock.random_faults(RandomFaults::new(3, 1.0).kinds([Fault::Delay(Duration::from_millis(400))]));
    let tracker = support::dub(&mock)
        .tracker()
        .spool(fs.0.join("spool.sqlite"))
        .max_in_flight(4)
        .backoff(Duration::from_millis(50), Duration::from_millis(400))
        .start()
        .unwrap();
    let mut receipts = Vec::new();
    // Two events a customer: the second waits for the first's outcome to be written.
    for c in 0..12 {
        let customer = format!("user_{c}");
        receipts.push(tracker.send(lead(&customer)).await.unwrap());
        receipts.push(tracker.send(lead(&customer)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let filler = fs.0.join("filler");
    fill(&filler);
    // The deliveries in flight end while the disk is full; then it stays full for 2 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let errors = log.lines("ERROR");
    assert!(
        errors.len() <= 3,
        "{} ERROR lines in 2 s of full disk:\n{}",
        errors.len(),
        errors[..errors.len().min(10)].join("\n")
    );
    assert!(!errors.is_empty(), "the full disk is reported");
    let sent_while_full = mock.request_count();

    std::fs::remove_file(&filler).unwrap();
    let mut delivered = 0;
    for receipt in receipts {
        let outcome = tokio::time::timeout(Duration::from_secs(30), receipt)
            .await
            .expect("every event is delivered once the disk has room");
        assert!(outcome.is_delivered(), "{outcome:?}");
        delivered += 1;
    }
    assert_eq!(delivered, 24);
    assert_eq!(mock.request_count(), 24, "each event was sent once");
    assert!(sent_while_full <= 8, "{sent_while_full} sent while full");
    let report = tracker.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(report.left_in_spool, 0, "no row is left claimed");
    assert!(
        log.lines("INFO")
            .iter()
            .any(|l| l.contains("can be written again")),
        "the end of the trouble is reported"
    );
    let errors = log.lines("ERROR");
    eprintln!(
        "{} ERROR lines in all:\n{}",
        errors.len(),
        errors.join("\n")
    );
    assert!(errors.len() <= 3);
}

/// A spool holding `events` undelivered leads, checkpointed into its main file.
async fn spool_with_backlog(path: &Path, events: usize) {
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Status(503)]));
    let tracker = support::dub(&mock)
        .tracker()
        .spool(path)
        .capacity(events + 1)
        .start()
        .unwrap();
    for c in 0..events {
        drop(tracker.send(lead(&format!("user_{c}"))).await.unwrap());
    }
    let report = tracker.shutdown(Duration::from_millis(50)).await;
    assert_eq!(report.left_in_spool, events as u64);
    // The last connection to close checkpoints the WAL into the main file.
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    drop(conn);
}

#[tokio::test]
async fn a_damaged_spool_is_refused_at_start_not_taken_for_empty() {
    let dir = temp_dir();
    let path = dir.join("damaged.sqlite");
    spool_with_backlog(&path, 2_001).await;
    let len = std::fs::metadata(&path).unwrap().len();
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // 4 KiB of garbage in the middle of the file.
    f.seek(SeekFrom::Start((len / 2) & !4095)).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    let garbage: Vec<u8> = (0..4096).map(|_| rng.u8(..)).collect();
    f.write_all(&garbage).unwrap();
    f.sync_all().unwrap();
    drop(f);

    let mock = MockDub::start().await.unwrap();
    let started = support::dub(&mock).tracker().spool(&path).start();
    let Err(e) = started else {
        let tracker = started.unwrap();
        let stats = tracker.stats();
        let report = tracker.shutdown(Duration::from_millis(200)).await;
        panic!("a damaged spool started: {stats:?}, {report:?}");
    };
    let message = e.to_string();
    eprintln!("{message}");
    assert!(message.contains("damaged"), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

#[tokio::test]
async fn a_spool_that_cannot_be_read_is_never_reported_drained() {
    let dir = temp_dir();
    let path = dir.join("unreadable.sqlite");
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Status(503)]));
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    for c in 0..10 {
        drop(tracker.send(lead(&format!("user_{c}"))).await.unwrap());
    }
    // The file stops being readable under the running tracker.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch("DROP TABLE events").unwrap();
    drop(conn);
    let stats = tracker.stats();
    assert!(stats.store_error.is_some(), "{stats:?}");
    let report = tracker.shutdown(Duration::from_millis(300)).await;
    assert!(!report.drained, "{report:?}");
    let why = report.stats.store_error.as_deref().unwrap_or_default();
    assert!(why.contains("could not be read"), "{report:?}");
}

#[tokio::test]
async fn a_spool_on_a_read_only_filesystem_says_so_in_one_line() {
    let Some(fs) = Tmpfs::mount("1m") else { return };
    let mock = MockDub::start().await.unwrap();
    // An existing spool, then the filesystem turns read-only.
    let path = fs.0.join("spool.sqlite");
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    tracker.shutdown(Duration::from_millis(100)).await;
    fs.remount("ro");
    for path in [path, fs.0.join("new.sqlite")] {
        let e = support::dub(&mock)
            .tracker()
            .spool(&path)
            .start()
            .expect_err("a read-only spool cannot be used");
        let message = e.to_string();
        eprintln!("{message}");
        assert!(
            message.contains("cannot be written") && message.contains("ead-only file system"),
            "{message}"
        );
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(!message.contains('\n'), "{message}");
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_spool_is_named_in_one_line() {
    let dir = temp_dir();
    let mock = MockDub::start().await.unwrap();
    let other = dir.join("other.sqlite");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch(
        "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT);
         CREATE TABLE events (id INTEGER PRIMARY KEY, payload TEXT, at INTEGER);
         INSERT INTO events (payload, at) VALUES ('x', 1);",
    )
    .unwrap();
    drop(conn);
    let text = dir.join("notes.txt");
    std::fs::write(&text, "these are my notes, not a database\n".repeat(200)).unwrap();
    for (path, expected) in [
        (
            &other,
            "is not a dub spool (it has tables accounts, events)",
        ),
        (&text, "is not a SQLite database"),
    ] {
        let e = support::dub(&mock)
            .tracker()
            .spool(path)
            .start()
            .expect_err("not a spool");
        let message = e.to_string();
        eprintln!("{message}");
        assert!(message.contains(expected), "{message}");
        assert!(!message.contains('\n'), "{message}");
        assert!(!message.contains("CREATE"), "{message}");
        assert!(message.len() < 300, "{} bytes: {message}", message.len());
    }
    // Nothing was written into the other application's file.
    let conn = rusqlite::Connection::open(&other).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 2);
}

/// A spool holding one undelivered lead, claimed by a dead owner registered with `pid`;
/// `process` is that owner's process identity, where the schema has the column.
async fn spool_claimed_by_dead_owner(path: &Path, pid: u32, process: Option<&str>) {
    spool_with_backlog(path, 1).await;
    let conn = rusqlite::Connection::open(path).unwrap();
    let owner = format!("{pid}-00000000deadbeef");
    conn.execute(
        "INSERT INTO owners (owner, pid, heartbeat_ms) VALUES (?1, ?2, ?3)",
        rusqlite::params![owner, pid, now_ms()],
    )
    .unwrap();
    if let Some(process) = process {
        conn.execute(
            "UPDATE owners SET process = ?2 WHERE owner = ?1",
            rusqlite::params![owner, process],
        )
        .unwrap();
    }
    let claimed = conn
        .execute(
            "UPDATE events SET state = 1, owner = ?1",
            rusqlite::params![owner],
        )
        .unwrap();
    assert_eq!(claimed, 1);
}

#[tokio::test]
async fn claims_of_a_dead_owner_that_had_our_pid_are_recovered_at_start() {
    // In a container the service is always PID 1: the owner that died had the PID this
    // process has now, and its heartbeat is fresh.
    let dir = temp_dir();
    let path = dir.join("same-pid.sqlite");
    spool_claimed_by_dead_owner(&path, std::process::id(), None).await;
    let mock = MockDub::start().await.unwrap();
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    let report = tracker.shutdown(Duration::from_secs(3)).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(mock.leads().len(), 1);
}

#[tokio::test]
async fn claims_of_a_dead_owner_whose_pid_another_process_took_are_recovered_at_start() {
    // A live process holds the dead owner's PID, but it started at another time.
    let mut other = Command::new("sleep").arg("30").spawn().unwrap();
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let process = format!("{} {} 1", boot.trim(), ns.display());
    let dir = temp_dir();
    let path = dir.join("reused-pid.sqlite");
    spool_claimed_by_dead_owner(&path, other.id(), Some(&process)).await;
    let mock = MockDub::start().await.unwrap();
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    let report = tracker.shutdown(Duration::from_secs(3)).await;
    let _ = other.kill();
    let _ = other.wait();
    assert!(report.drained, "{report:?}");
    assert_eq!(mock.leads().len(), 1);
}

#[tokio::test]
async fn claims_of_a_live_owner_in_this_process_are_left_alone() {
    // Two trackers of one process share a spool: neither takes the other's claims.
    let dir = temp_dir();
    let path = dir.join("live.sqlite");
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(
        RandomFaults::new(3, 1.0).kinds([Fault::Delay(Duration::from_millis(1_500))]),
    );
    let first = support::dub(&mock).tracker().spool(&path).start().unwrap();
    let receipt = first.send(lead("user_1")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = support::dub(&mock).tracker().spool(&path).start().unwrap();
    let report = second.shutdown(Duration::from_millis(500)).await;
    assert_eq!(report.stats.uncertain + report.stats.delivered, 0);
    assert!(receipt.await.is_delivered());
    first.shutdown(Duration::from_secs(5)).await;
    assert_eq!(mock.request_count(), 1, "sent once, by the first tracker");
}

#[tokio::test]
async fn a_spool_written_before_the_head_index_is_upgraded_and_drained_in_order() {
    let dir = temp_dir();
    let path = dir.join("old.sqlite");
    let mock = MockDub::start().await.unwrap();
    mock.random_faults(RandomFaults::new(1, 1.0).kinds([Fault::Status(503)]));
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    for round in 0..3 {
        for c in 0..3 {
            let customer = format!("user_{c}");
            let event: Event = if round == 0 {
                lead(&customer)
            } else {
                crate::support::sale_for(&customer, Some(&format!("in_{c}_{round}"))).into()
            };
            drop(tracker.send(event).await.unwrap());
        }
    }
    tracker.shutdown(Duration::from_millis(50)).await;
    // What the file looked like before `head` existed.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "DROP INDEX events_heads;
         DROP TRIGGER head_insert; DROP TRIGGER head_update; DROP TRIGGER head_delete;
         ALTER TABLE events DROP COLUMN head;
         ALTER TABLE owners DROP COLUMN process;",
    )
    .unwrap();
    drop(conn);
    mock.clear_faults();
    let tracker = support::dub(&mock).tracker().spool(&path).start().unwrap();
    let report = tracker.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");
    assert_eq!(report.stats.delivered, 9);
    // Each customer's lead, then its sales, in hand-over order.
    assert_eq!(mock.leads().len(), 3);
    assert!(mock.requests().iter().all(|r| r.status != Some(404)));
    let sent: Vec<String> = mock
        .sales()
        .into_iter()
        .filter_map(|s| s.invoice_id)
        .collect();
    for c in 0..3 {
        let mine: Vec<&String> = sent
            .iter()
            .filter(|s| s.starts_with(&format!("in_{c}_")))
            .collect();
        assert_eq!(
            mine,
            [format!("in_{c}_1"), format!("in_{c}_2")]
                .iter()
                .collect::<Vec<_>>()
        );
    }
}
