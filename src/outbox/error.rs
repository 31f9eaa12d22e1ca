//! What can go wrong handing an event to the outbox or operating it.

use std::fmt;

/// An outbox operation that did not happen.
///
/// Nothing was written when an operation returns an error; for [`enqueue`](super::enqueue)
/// inside a transaction, a [`Database`](OutboxError::Database) error leaves that transaction
/// aborted, as any failed statement does.
#[derive(Debug)]
#[non_exhaustive]
pub enum OutboxError {
    /// The event breaks a rule of Dub's API (the error names the field and the rule); it was
    /// not written.
    Invalid(crate::Error),
    /// PostgreSQL refused the statement or could not be reached.
    Database(sqlx_core::Error),
    /// The database holds a newer version of the outbox schema than this version of the crate
    /// knows: upgrade the crate before running this one against it.
    SchemaTooNew {
        /// The version the database is at.
        found: i32,
        /// The newest version this crate knows ([`SCHEMA_VERSION`](super::SCHEMA_VERSION)).
        known: i32,
    },
}

impl OutboxError {
    /// The field an invalid event broke a rule of, under Dub's name.
    pub fn field(&self) -> Option<&str> {
        match self {
            OutboxError::Invalid(e) => e.field(),
            _ => None,
        }
    }
}

impl fmt::Display for OutboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboxError::Invalid(e) => write!(f, "not enqueued: {e}"),
            OutboxError::Database(e) => write!(f, "outbox database error: {e}"),
            OutboxError::SchemaTooNew { found, known } => write!(
                f,
                "the outbox schema in the database is version {found}, newer than version \
                 {known} that this version of dub knows: upgrade dub"
            ),
        }
    }
}

impl std::error::Error for OutboxError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OutboxError::Invalid(e) => Some(e),
            OutboxError::Database(e) => Some(e),
            OutboxError::SchemaTooNew { .. } => None,
        }
    }
}

impl From<sqlx_core::Error> for OutboxError {
    fn from(e: sqlx_core::Error) -> Self {
        OutboxError::Database(e)
    }
}
