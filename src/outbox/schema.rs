//! The outbox's schema, versioned, and the migration that creates or upgrades it.

use super::OutboxError;
use sqlx_postgres::{PgPool, Postgres};

/// The schema's newest version, the one [`MIGRATIONS`] end at.
pub const SCHEMA_VERSION: i32 = 3;

/// The outbox's schema as SQL, one script per version in order (the files `sql/outbox.sql`,
/// `sql/outbox_v2.sql` and `sql/outbox_v3.sql` of the crate), for teams that apply migrations with their own tool:
/// apply the versions the database does not have yet. Each records its version in the table
/// `dub_outbox_schema`, so that [`migrate`] then has nothing to do.
pub const MIGRATIONS: &[(i32, &str)] = &[(1, SCHEMA_SQL), (2, SCHEMA_SQL_V2), (3, SCHEMA_SQL_V3)];

/// The outbox's schema at version 1 (the file `sql/outbox.sql`): the table `dub_outbox`.
pub const SCHEMA_SQL: &str = include_str!("../../sql/outbox.sql");

/// Version 2 (the file `sql/outbox_v2.sql`): the rate-limit budget relays share.
pub const SCHEMA_SQL_V2: &str = include_str!("../../sql/outbox_v2.sql");

/// Version 3 (the file `sql/outbox_v3.sql`): the key's limit in the shared budget, given or
/// learned, so that relays not given it pace by it too.
pub const SCHEMA_SQL_V3: &str = include_str!("../../sql/outbox_v3.sql");

/// Whom the outbox's migration lock belongs to, among the advisory locks of the database:
/// "dub_outb" in ASCII.
const MIGRATION_LOCK: i64 = 0x6475_625f_6f75_7462;

/// What [`migrate`] found and left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migrated {
    /// The version the database was at (0: no outbox yet).
    pub from: i32,
    /// The version it is at now.
    pub to: i32,
}

/// Creates the outbox's tables, or upgrades them to [`SCHEMA_VERSION`]; does nothing when
/// they are current.
///
/// Safe to run from every replica at start, all at once: it runs in one transaction holding a
/// PostgreSQL advisory lock, so one replica migrates while the others wait, then find nothing
/// to do. A database at a version newer than this crate knows is left alone with
/// [`OutboxError::SchemaTooNew`].
///
/// ```no_run
/// # mod sqlx { pub use sqlx_postgres::PgPool; }
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
/// let migrated = dub::outbox::migrate(&pool).await?;
/// println!("outbox schema: version {} (was {})", migrated.to, migrated.from);
/// # Ok(())
/// # }
/// ```
pub async fn migrate(pool: &PgPool) -> Result<Migrated, OutboxError> {
    let mut tx = pool.begin().await?;
    sqlx_core::query::query::<Postgres>("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    let from = current_version(&mut tx).await?;
    if from > SCHEMA_VERSION {
        return Err(OutboxError::SchemaTooNew {
            found: from,
            known: SCHEMA_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS {
        if *version > from {
            let conn: &mut sqlx_postgres::PgConnection = &mut tx;
            sqlx_core::executor::Executor::execute(conn, sqlx_core::raw_sql::raw_sql(sql)).await?;
        }
    }
    let to = current_version(&mut tx).await?;
    tx.commit().await?;
    Ok(Migrated { from, to })
}

/// The version recorded in the database, 0 when it has no outbox.
async fn current_version(tx: &mut sqlx_postgres::PgConnection) -> Result<i32, OutboxError> {
    let exists: bool = sqlx_core::query_scalar::query_scalar(
        "SELECT to_regclass('dub_outbox_schema') IS NOT NULL",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !exists {
        return Ok(0);
    }
    let version: Option<i32> =
        sqlx_core::query_scalar::query_scalar("SELECT max(version) FROM dub_outbox_schema")
            .fetch_one(&mut *tx)
            .await?;
    Ok(version.unwrap_or(0))
}
