//! The outbox against a real PostgreSQL server (Debian's, started by `support::postgres` in a
//! temporary directory): its test harness first.

use crate::support::postgres::Postgres;
use std::net::TcpStream;

#[test]
fn the_test_cluster_recovers_from_a_crash_and_is_removed_on_drop() {
    let Some(pg) = Postgres::start() else { return };
    pg.psql(
        "postgres",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2)",
    );
    pg.stop_immediate();
    assert!(TcpStream::connect(("127.0.0.1", pg.port())).is_err());
    pg.restart();
    assert_eq!(pg.psql("postgres", "SELECT sum(x) FROM t"), "3");

    let url = pg.fresh_database();
    let database = url.rsplit('/').next().unwrap().to_owned();
    assert_eq!(pg.psql(&database, "SELECT current_database()"), database);

    let (port, directory) = (pg.port(), pg.directory().to_owned());
    drop(pg);
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    assert!(!directory.exists());
}
