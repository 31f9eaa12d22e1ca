//! Throwaway PostgreSQL clusters for the outbox tests: a real server (Debian's), started with
//! `initdb` and `pg_ctl` in a temporary directory, listening on a free port of 127.0.0.1 and on
//! a socket in that directory, stopped and deleted on drop.
//!
//! `initdb` refuses to run as root, and CI runs as root: then every server command runs as the
//! `postgres` user through `runuser`, in a directory that user owns. The binaries are looked up
//! in `$PG_BIN`, then the newest `/usr/lib/postgresql/*/bin`, then `PATH`. Without them a test
//! fails when `CI` is set (`.ci/run` installs the server), and otherwise skips, saying so on
//! stderr.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// A running cluster, owned by this test process.
#[derive(Debug)]
pub struct Postgres {
    bin: PathBuf,
    /// Owns `data/`, `log` and the socket; owned by `postgres` when we are root.
    base: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// How many clusters and databases this process made, to name them apart.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The cluster that tests without crashes share while at least one of them holds it.
static SHARED: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());

impl Postgres {
    /// A cluster of this test's own (for tests that stop or crash the server), or `None`
    /// outside CI when no server is installed (after saying so).
    pub fn start() -> Option<Postgres> {
        let bin = server_bin()?;
        let as_postgres = is_root();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("dub-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).expect("create the cluster's directory");
        if as_postgres {
            chown_to_postgres(&base);
        }
        let mut pg = Postgres {
            bin,
            base,
            port: 0,
            as_postgres,
        };
        pg.run_checked(
            "initdb",
            [
                "-D",
                &pg.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        // A free port can be taken by someone else before the server binds it: try again.
        let mut last = String::new();
        for _ in 0..5 {
            pg.port = free_port();
            match pg.try_start() {
                Ok(()) => return Some(pg),
                Err(why) => last = why,
            }
        }
        panic!("PostgreSQL did not start: {last}");
    }

    /// The cluster shared by the tests running now (started by the first that asks, stopped
    /// when the last lets go), or `None` as [`Postgres::start`]. Give each test its own
    /// database with [`Postgres::fresh_database`].
    pub fn shared() -> Option<Arc<Postgres>> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pg) = shared.upgrade() {
            return Some(pg);
        }
        let pg = Arc::new(Postgres::start()?);
        *shared = Arc::downgrade(&pg);
        Some(pg)
    }

    /// Creates an empty database and returns its URL.
    pub fn fresh_database(&self) -> String {
        let name = format!("t{}", COUNTER.fetch_add(1, Ordering::Relaxed));
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url_of(&name)
    }

    /// The URL of the `postgres` database, over TCP (the command-line tests use it).
    #[allow(dead_code)]
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the cluster, deleted on drop.
    pub fn directory(&self) -> &Path {
        &self.base
    }

    /// Runs SQL with `psql` (as a program in another language would), returning its output
    /// unaligned and without headers; panics on an error.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(["-c", sql])
            .output()
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql failed on {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Turns TLS on, with a server certificate for 127.0.0.1 signed by a throwaway CA, and
    /// returns the CA's certificate (for `sslrootcert`); `None` outside CI when `openssl` is
    /// missing (after saying so). Plain connections are still accepted.
    #[allow(dead_code)]
    pub fn enable_tls(&self) -> Option<PathBuf> {
        if Command::new("openssl").arg("version").output().is_err() {
            let why = "openssl not found: the TLS test cannot make its certificates";
            assert!(!in_ci(), "{why}");
            eprintln!("!!! SKIPPED: {why}");
            return None;
        }
        let dir = self.base.join("tls");
        std::fs::create_dir_all(&dir).expect("create the certificates' directory");
        let at = |name: &str| dir.join(name).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let (ca_key, ca) = (at("ca.key"), at("ca.crt"));
        let (key, csr, cert, ext) = (
            at("server.key"),
            at("server.csr"),
            at("server.crt"),
            at("ext"),
        );
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    &ca_key,
                    "-out",
                    &ca,
                    "-days",
                    "2",
                    "-subj",
                    "/CN=dub test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"],
            ]
            .concat(),
        );
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write the extensions");
        openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ]);
        // The server reads its key only when it is its own and private.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
            .expect("chmod the key");
        if self.as_postgres {
            chown_to_postgres(&dir);
            chown_to_postgres(Path::new(&key));
            chown_to_postgres(Path::new(&cert));
        }
        self.psql(
            "postgres",
            &format!("ALTER SYSTEM SET ssl_cert_file = '{cert}'"),
        );
        self.psql(
            "postgres",
            &format!("ALTER SYSTEM SET ssl_key_file = '{key}'"),
        );
        self.psql("postgres", "ALTER SYSTEM SET ssl = on");
        self.psql("postgres", "SELECT pg_reload_conf()");
        Some(PathBuf::from(ca))
    }

    /// Kills the server as a crash would (`pg_ctl -m immediate stop`): no checkpoint, clients
    /// cut off; the next start recovers from the WAL.
    pub fn stop_immediate(&self) {
        self.run_checked("pg_ctl", ["-D", &self.data(), "-m", "immediate", "stop"]);
    }

    /// Starts the server again on the same port, after [`Postgres::stop_immediate`].
    pub fn restart(&self) {
        if let Err(why) = self.try_start() {
            panic!("PostgreSQL did not start again: {why}");
        }
    }

    fn try_start(&self) -> Result<(), String> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.base.display()
        );
        let log = self.base.join("log");
        let out = self.run(
            "pg_ctl",
            [
                "-D",
                &self.data(),
                "-l",
                &log.display().to_string(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
        if out.status.success() {
            return Ok(());
        }
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(10).collect();
        Err(format!(
            "{}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ))
    }

    fn data(&self) -> String {
        self.base.join("data").display().to_string()
    }

    fn run<I, S>(&self, program: &str, args: I) -> Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut cmd = Command::new("runuser");
            cmd.args([OsStr::new("-u"), OsStr::new("postgres"), OsStr::new("--")])
                .arg(&program);
            cmd
        } else {
            Command::new(&program)
        };
        // Inherited descriptors would keep a test harness's pipes open for the server's life.
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .current_dir(&self.base)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
    }

    fn run_checked<I, S>(&self, program: &str, args: I)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.port != 0 {
            let _ = self.run("pg_ctl", ["-D", &self.data(), "-m", "fast", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The directory holding `initdb`, `pg_ctl` and `psql`, or `None` (outside CI only) after
/// saying loudly that nothing is tested.
fn server_bin() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "psql"]
            .iter()
            .all(|p| dir.join(p).is_file())
    };
    let mut candidates: Vec<PathBuf> = std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .collect();
    versions.sort();
    candidates.extend(versions.into_iter().rev().map(|(_, dir)| dir));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path));
    }
    if let Some(dir) = candidates.into_iter().find(|d| has_all(d)) {
        return Some(dir);
    }
    let why = "no PostgreSQL server found (initdb, pg_ctl and psql in $PG_BIN, \
               /usr/lib/postgresql/*/bin or PATH); install Debian's `postgresql` package";
    if in_ci() {
        panic!("CI requires the PostgreSQL tests: {why}");
    }
    let bar = "!".repeat(96);
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n!!! SKIPPED: a PostgreSQL test did not run. {why}\n{bar}\n"
    );
    None
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn chown_to_postgres(dir: &Path) {
    let name = c"postgres";
    // SAFETY: getpwnam takes a NUL-terminated name; the fields are read before any other call
    // could reuse its static buffer.
    let (uid, gid) = unsafe {
        let entry = libc::getpwnam(name.as_ptr());
        assert!(
            !entry.is_null(),
            "running as root but there is no `postgres` user"
        );
        ((*entry).pw_uid, (*entry).pw_gid)
    };
    std::os::unix::fs::chown(dir, Some(uid), Some(gid)).expect("chown the cluster's directory");
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}
