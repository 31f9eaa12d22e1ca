//! Handing an event over: one checked `INSERT`, in the caller's transaction.

use super::OutboxError;
use crate::tracker::Event;
use sqlx_postgres::PgExecutor;

/// A row of the outbox: the `id` column.
pub type OutboxId = i64;

/// What [`enqueue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enqueued {
    /// The event was added as this row; it is delivered once the transaction commits.
    New(OutboxId),
    /// The outbox already holds an event with the same deduplication key (the same invoice,
    /// or a lead for the same customer and event name), so this one was dropped: Dub would
    /// not record it again anyway.
    Duplicate,
}

impl Enqueued {
    /// Whether the event was dropped as a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Enqueued::Duplicate)
    }

    /// The new row's id, unless the event was a duplicate.
    pub fn id(&self) -> Option<OutboxId> {
        match self {
            Enqueued::New(id) => Some(*id),
            Enqueued::Duplicate => None,
        }
    }
}

/// Adds an event to the outbox with one `INSERT`, through `executor`: your open transaction
/// (`&mut *tx`), a connection, or a pool (the row is then committed at once).
///
/// The event is checked against Dub's rules first ([`Event::validate`]); one that breaks a rule
/// is refused with [`OutboxError::Invalid`], which names the field, and nothing is written.
/// An event whose deduplication key the outbox already holds is dropped
/// ([`Enqueued::Duplicate`]). If another open transaction has just enqueued the same key, the
/// `INSERT` waits for it to end, as PostgreSQL does for any unique key.
///
/// ```no_run
/// # mod sqlx { pub use sqlx_postgres::PgPool; }
/// use dub::models::TrackSaleRequest;
/// use dub::outbox::{self, Enqueued};
///
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let sale = TrackSaleRequest::builder()
///     .customer_external_id("user_42")
///     .amount(4_900)
///     .invoice_id("in_1")
///     .build();
/// let mut tx = pool.begin().await?;
/// // ... your own writes in `tx` ...
/// match outbox::enqueue(&mut *tx, sale).await? {
///     Enqueued::New(id) => println!("row {id} is delivered once this commits"),
///     Enqueued::Duplicate => println!("invoice in_1 was already in the outbox"),
///     _ => {}
/// }
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub async fn enqueue<'c>(
    executor: impl PgExecutor<'c>,
    event: impl Into<Event>,
) -> Result<Enqueued, OutboxError> {
    let event = event.into();
    event.validate().map_err(OutboxError::Invalid)?;
    let record = serde_json::to_value(&event).map_err(|e| {
        // The models serialise infallibly; should that ever change, say so as a refusal
        // rather than write a record the relay cannot read.
        OutboxError::Invalid(crate::Error::validation(
            "event",
            format!("cannot be serialised: {e}"),
        ))
    })?;
    let id: Option<OutboxId> = sqlx_core::query_scalar::query_scalar(
        "INSERT INTO dub_outbox (event) VALUES ($1) ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(record)
    .fetch_optional(executor)
    .await?;
    Ok(id.map_or(Enqueued::Duplicate, Enqueued::New))
}
