//! A transactional outbox in your PostgreSQL: hand events over inside your own database
//! transaction, and let relays deliver them to Dub (feature `postgres`).
//!
//! A tracker's queue lives in one process (in memory, or in a SQLite file on its disk). A service
//! that runs as several replicas, in containers whose disk dies with them, or as functions that
//! cannot run anything after they answer, needs the queue where its data already is: in the
//! database, written in the same transaction as the business row the event is about. The event
//! is then delivered if and only if that transaction commits, and handing it over is one
//! `INSERT`: nothing talks to Dub on the request path.
//!
//! ```no_run
//! # mod sqlx { pub use sqlx_core::query::query; pub use sqlx_postgres::PgPool; }
//! use dub::models::TrackLeadRequest;
//! use dub::outbox;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://app@db/app").await?;
//! outbox::migrate(&pool).await?; // idempotent: safe from every replica at start
//!
//! // In a request handler: the user row and its lead commit together, or not at all.
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO users (id, email) VALUES ($1, $2)")
//!     .bind("user_42")
//!     .bind("ada@example.com")
//!     .execute(&mut *tx)
//!     .await?;
//! let lead = TrackLeadRequest::builder()
//!     .click_id("cl_7Hx3")
//!     .event_name("Sign up")
//!     .customer_external_id("user_42")
//!     .build();
//! outbox::enqueue(&mut *tx, lead).await?;
//! tx.commit().await?;
//! # Ok(())
//! # }
//! ```
//!
//! A [`Relay`] delivers the outbox: run one or more in your services (or as separate
//! processes), on any number of machines.
//!
//! # The table is a contract
//!
//! Any language, or a trigger, can produce with plain SQL, in the JSON record format that
//! `dub-track send` reads (an [`Event`] as JSON: the request's fields under Dub's names, and
//! `"type"`: `"lead"` or `"sale"`):
//!
//! ```sql
//! INSERT INTO dub_outbox (event)
//! VALUES ('{"type":"sale","customerExternalId":"user_42","amount":4900,"invoiceId":"in_1"}')
//! ON CONFLICT DO NOTHING;
//! ```
//!
//! These names are fixed: the table `dub_outbox`, and its columns
//!
//! | column | type | what it holds |
//! |---|---|---|
//! | `event` | `jsonb` | the record |
//! | `state` | `text` | `pending`, `in_flight`, `delivered`, `failed` or `uncertain` |
//! | `last_error` | `text` | the last error, naming the field or the HTTP status and Dub's message |
//! | `response` | `jsonb` | Dub's answer, once delivered |
//!
//! The other columns (ids, attempts, the lease, timestamps, the customer and the
//! deduplication key) belong to the relays. The schema is shipped as SQL, one script per
//! version ([`MIGRATIONS`], also the files `sql/outbox*.sql` in the crate), for teams that
//! apply migrations with their own tool; [`migrate`] applies it for everyone else.
//!
//! A row inserted with plain SQL is not checked on the way in: an event that breaks one of
//! Dub's rules is stored, and the relay ends it `failed`, with the field and the rule in
//! `last_error`, without holding any other event back. [`enqueue`] checks first and refuses it.
//!
//! # Duplicates stop at the door
//!
//! The database computes each event's deduplication key from the event itself, the way Dub
//! deduplicates: a sale's `invoiceId`; a lead's `customerExternalId` and `eventName` (both
//! trimmed as Dub trims them, the name lowercased with spaces as dashes), unless the lead is
//! in `deferred` mode. The key is unique, so the second copy of a webhook that reached two
//! replicas is dropped by `ON CONFLICT DO NOTHING` ([`enqueue`] says
//! [`Enqueued::Duplicate`]), and no two attempts of one invoice can ever be in flight at once.
//! A key lasts as long as its row (delivered rows are pruned after [`DEFAULT_RETENTION`]),
//! longer than the 7 days Dub remembers it. Events Dub cannot deduplicate (a sale without
//! `invoiceId`, a `deferred` lead) have no key: each row is one event, delivered at most once.
//!
//! Case folding of non-ASCII event names follows the database's `lower()`, which depends on
//! its locale; the schema needs a UTF-8 database.
//!
//! # Operating it
//!
//! [`stats`] counts the rows in each state; [`retry_failed`] puts failed events back once
//! their data is fixed (fix a row in place with `UPDATE dub_outbox SET event = ... WHERE id =
//! ...`: its deduplication key follows); [`prune`] deletes delivered rows older than a
//! retention period (every relay does it hourly, [`RelayBuilder::retention`]). Rows that end
//! `uncertain` may have been recorded by Dub and are never sent again by the outbox: check
//! them in Dub's dashboard.
//!
//! The crate's types come from sqlx 0.8 (`sqlx-core` and `sqlx-postgres`, the crates the
//! `sqlx` facade re-exports): pass a `&mut PgConnection` (`&mut *tx` for a transaction) or a
//! `&PgPool` from your own sqlx 0.8. One known snag: the `sqlx` facade 0.8 beside this crate's
//! `spool` feature does not resolve (`links = "sqlite3"`: the facade's optional SQLite driver
//! pins libsqlite3-sys 0.30, the spool's rusqlite needs 0.40); with the outbox you need no
//! spool, or depend on `sqlx-core` and `sqlx-postgres` directly, as this crate does.

mod budget;
mod error;
mod lease;
mod producer;
mod relay;
mod schema;
mod stats;
mod verdict;

pub use error::OutboxError;
pub use producer::{Enqueued, OutboxId, enqueue};
pub use relay::{Relay, RelayBuilder, RelayReport};
pub use schema::{
    MIGRATIONS, Migrated, SCHEMA_SQL, SCHEMA_SQL_V2, SCHEMA_SQL_V3, SCHEMA_VERSION, migrate,
};
pub use stats::{DEFAULT_RETENTION, Stats, prune, retry_failed, stats};

#[doc(no_inline)]
pub use crate::tracker::Event;

/// The channel the outbox's trigger notifies when events are committed.
pub const CHANNEL: &str = "dub_outbox";
