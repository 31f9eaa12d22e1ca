//! The outbox against a real PostgreSQL server (Debian's, started by `support::postgres` in a
//! temporary directory): its test harness first, then producing into it (the `postgres`
//! feature).

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

/// The events both halves enqueue.
#[cfg(feature = "postgres")]
mod events {
    use dub::models::{TrackLeadRequest, TrackSaleRequest};

    pub fn lead(customer: &str, event: &str) -> TrackLeadRequest {
        TrackLeadRequest::builder()
            .click_id("cl_1")
            .event_name(event)
            .customer_external_id(customer)
            .build()
    }

    pub fn sale(customer: &str, invoice: Option<&str>) -> TrackSaleRequest {
        let mut sale = TrackSaleRequest::builder()
            .customer_external_id(customer)
            .amount(4_900)
            .build();
        sale.invoice_id = invoice.map(str::to_owned);
        sale
    }
}

#[cfg(feature = "postgres")]
mod producing {
    use super::events::{lead, sale};
    use crate::support::postgres::Postgres;
    use dub::models::LeadMode;
    use dub::outbox::{self, Enqueued, OutboxError};
    use dub::tracker::Event;
    use serde_json::{Value, json};
    use sqlx_core::query::query;
    use sqlx_core::query_scalar::query_scalar;
    use sqlx_postgres::{PgListener, PgPool};
    use std::sync::Arc;
    use std::time::Duration;

    /// A migrated database of this test's own, on the shared cluster.
    async fn database() -> Option<(Arc<Postgres>, String, PgPool)> {
        let pg = Postgres::shared()?;
        let url = pg.fresh_database();
        let pool = PgPool::connect(&url).await.expect("connect");
        outbox::migrate(&pool).await.expect("migrate");
        Some((pg, url, pool))
    }

    fn name_of(url: &str) -> &str {
        url.rsplit('/').next().unwrap()
    }

    async fn rows(pool: &PgPool) -> Vec<(i64, Value, String)> {
        sqlx_core::query_as::query_as("SELECT id, event, state FROM dub_outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn an_event_is_in_the_outbox_if_and_only_if_its_transaction_commits() {
        let Some((_pg, _url, pool)) = database().await else {
            return;
        };
        let mut tx = pool.begin().await.unwrap();
        query("CREATE TABLE users (id text PRIMARY KEY)")
            .execute(&mut *tx)
            .await
            .unwrap();
        query("INSERT INTO users VALUES ('user_1')")
            .execute(&mut *tx)
            .await
            .unwrap();
        let added = outbox::enqueue(&mut *tx, lead("user_1", "Sign up"))
            .await
            .unwrap();
        let Enqueued::New(id) = added else {
            panic!("{added:?}")
        };
        assert!(rows(&pool).await.is_empty(), "not visible before commit");
        tx.commit().await.unwrap();
        let all = rows(&pool).await;
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, id);
        assert_eq!(all[0].2, "pending");
        let event: Event = serde_json::from_value(all[0].1.clone()).unwrap();
        assert_eq!(event, Event::Lead(lead("user_1", "Sign up")));

        // Rolled back: neither the business row nor the event.
        let mut tx = pool.begin().await.unwrap();
        query("INSERT INTO users VALUES ('user_2')")
            .execute(&mut *tx)
            .await
            .unwrap();
        outbox::enqueue(&mut *tx, lead("user_2", "Sign up"))
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert_eq!(rows(&pool).await.len(), 1);

        // Dropped without commit is a rollback too.
        {
            let mut tx = pool.begin().await.unwrap();
            outbox::enqueue(&mut *tx, sale("user_1", Some("in_dropped")))
                .await
                .unwrap();
        }
        assert_eq!(rows(&pool).await.len(), 1);

        // A plain connection or the pool commits at once.
        let mut conn = pool.acquire().await.unwrap();
        outbox::enqueue(&mut *conn, sale("user_1", Some("in_1")))
            .await
            .unwrap();
        outbox::enqueue(&pool, sale("user_1", Some("in_2")))
            .await
            .unwrap();
        assert_eq!(rows(&pool).await.len(), 3);
    }

    #[tokio::test]
    async fn committed_events_wake_listeners_at_commit() {
        let Some((_pg, url, pool)) = database().await else {
            return;
        };
        let mut listener = PgListener::connect(&url).await.unwrap();
        listener.listen(outbox::CHANNEL).await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        for i in 0..3 {
            outbox::enqueue(&mut *tx, sale("u", Some(&format!("in_{i}"))))
                .await
                .unwrap();
        }
        let early = tokio::time::timeout(Duration::from_millis(200), listener.recv()).await;
        assert!(early.is_err(), "notified before commit: {early:?}");
        tx.commit().await.unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("a notification at commit")
            .unwrap();
        assert_eq!(woken.channel(), outbox::CHANNEL);
    }

    #[tokio::test]
    async fn duplicates_of_what_dub_deduplicates_are_dropped_at_the_door() {
        let Some((_pg, _url, pool)) = database().await else {
            return;
        };
        let enqueue = |event: Event| {
            let pool = pool.clone();
            async move { outbox::enqueue(&pool, event).await.unwrap() }
        };
        // A sale's invoice.
        assert!(
            !enqueue(sale("u1", Some("in_1")).into())
                .await
                .is_duplicate()
        );
        let mut other = sale("u2", Some("in_1"));
        other.amount = 1;
        assert_eq!(enqueue(other.into()).await, Enqueued::Duplicate);

        // A lead's customer and event name, as Dub normalises them: both trimmed, the name
        // lowercased with spaces as dashes; `wait` is deduplicated like `async`.
        assert!(
            !enqueue(lead("user_1", "Sign Up").into())
                .await
                .is_duplicate()
        );
        for (customer, name) in [
            ("user_1", "sign-up"),
            ("  user_1\u{3000}", " SIGN UP\t"),
            ("user_1", "Sign-Up"),
        ] {
            let outcome = enqueue(lead(customer, name).into()).await;
            assert!(outcome.is_duplicate(), "{customer:?} {name:?}");
        }
        let mut wait = lead("user_1", "sign up");
        wait.mode = Some(LeadMode::Wait);
        assert!(enqueue(wait.into()).await.is_duplicate());
        // Not the same: another customer, another name, a customer that only differs inside.
        for (customer, name) in [
            ("user_2", "Sign Up"),
            ("user_1", "Sign Up 2"),
            ("user_1", "Signup"),
            ("user 1", "Sign Up"),
        ] {
            let outcome = enqueue(lead(customer, name).into()).await;
            assert!(!outcome.is_duplicate(), "{customer:?} {name:?}");
        }

        // What Dub does not deduplicate is never dropped: a deferred lead, a sale without an
        // invoice (or with an empty one).
        for _ in 0..2 {
            let mut deferred = lead("user_1", "Sign Up");
            deferred.mode = Some(LeadMode::Deferred);
            assert!(!enqueue(deferred.into()).await.is_duplicate());
            assert!(!enqueue(sale("u1", None).into()).await.is_duplicate());
            assert!(!enqueue(sale("u1", Some("")).into()).await.is_duplicate());
        }
        let keys: Vec<Option<String>> =
            query_scalar("SELECT dedup_key FROM dub_outbox ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let with_key = keys.iter().filter(|k| k.is_some()).count();
        assert_eq!((keys.len(), with_key), (1 + 1 + 4 + 6, 1 + 1 + 4));
    }

    #[tokio::test]
    async fn concurrent_duplicates_in_open_transactions_keep_one() {
        let Some((_pg, _url, pool)) = database().await else {
            return;
        };
        let mut first = pool.begin().await.unwrap();
        assert!(
            !outbox::enqueue(&mut *first, sale("u", Some("in_twice")))
                .await
                .unwrap()
                .is_duplicate()
        );
        // The second replica's insert waits for the first transaction, then is dropped.
        let second = {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                let outcome = outbox::enqueue(&mut *tx, sale("u", Some("in_twice")))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                outcome
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        first.commit().await.unwrap();
        assert_eq!(second.await.unwrap(), Enqueued::Duplicate);
        assert_eq!(rows(&pool).await.len(), 1);
    }

    #[tokio::test]
    async fn enqueue_refuses_an_invalid_event_naming_the_field_and_writes_nothing() {
        let Some((_pg, _url, pool)) = database().await else {
            return;
        };
        let mut tx = pool.begin().await.unwrap();
        let err = outbox::enqueue(&mut *tx, lead("   ", "Sign up"))
            .await
            .unwrap_err();
        assert!(matches!(err, OutboxError::Invalid(_)), "{err:?}");
        assert_eq!(err.field(), Some("customerExternalId"));
        assert!(err.to_string().contains("customerExternalId"), "{err}");
        let mut bad = sale("u", Some("in_1"));
        bad.customer_email = Some("not an email".into());
        let err = outbox::enqueue(&mut *tx, bad).await.unwrap_err();
        assert_eq!(err.field(), Some("customerEmail"));
        // The transaction is still usable: nothing was sent to the database.
        outbox::enqueue(&mut *tx, sale("u", Some("in_2")))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(rows(&pool).await.len(), 1);
    }

    #[tokio::test]
    async fn another_program_enqueues_with_plain_sql_in_the_record_format() {
        let Some((pg, url, pool)) = database().await else {
            return;
        };
        // The README's statement, through psql, as a service in another language would.
        let insert = r#"INSERT INTO dub_outbox (event) VALUES ('{"type":"sale","customerExternalId":"user_42","amount":4900,"invoiceId":"in_1"}'::jsonb) ON CONFLICT DO NOTHING"#;
        pg.psql(name_of(&url), insert);
        pg.psql(name_of(&url), insert);
        let all = rows(&pool).await;
        assert_eq!(all.len(), 1, "the second copy was dropped");
        assert_eq!(all[0].2, "pending");
        let event: Event = serde_json::from_value(all[0].1.clone()).unwrap();
        assert_eq!(event, Event::Sale(sale("user_42", Some("in_1"))));
        event.validate().unwrap();
        // The API sees it as the same invoice.
        let again = outbox::enqueue(&pool, sale("user_42", Some("in_1")))
            .await
            .unwrap();
        assert!(again.is_duplicate());
        // And what the API writes is what another program reads.
        outbox::enqueue(&pool, lead("user_43", "Sign up"))
            .await
            .unwrap();
        let record = pg.psql(
            name_of(&url),
            "SELECT event FROM dub_outbox WHERE event->>'type' = 'lead'",
        );
        let record: Value = serde_json::from_str(&record).unwrap();
        assert_eq!(
            record,
            json!({"type": "lead", "clickId": "cl_1", "eventName": "Sign up", "customerExternalId": "user_43"})
        );
    }

    #[tokio::test]
    async fn an_invalid_event_inserted_with_sql_is_stored_for_the_relay_to_fail() {
        let Some((pg, url, pool)) = database().await else {
            return;
        };
        // Broken in every way the database does not judge: an empty customer, a mistyped
        // amount, an unknown type, not even an object.
        for event in [
            r#"{"type":"lead","customerExternalId":"","eventName":"Sign up","clickId":"c"}"#,
            r#"{"type":"sale","customerExternalId":"u","amount":"many","invoiceId":"in_9"}"#,
            r#"{"type":"refund","customerExternalId":"u"}"#,
            r#"[1, 2, 3]"#,
            r#""just text""#,
        ] {
            pg.psql(
                name_of(&url),
                &format!("INSERT INTO dub_outbox (event) VALUES ('{event}')"),
            );
        }
        let all = rows(&pool).await;
        assert_eq!(all.len(), 5);
        assert!(all.iter().all(|(_, _, state)| state == "pending"));
        // Each is its own row: none holds the key of a valid event.
        outbox::enqueue(&pool, lead("u", "Sign up")).await.unwrap();
        let stats = outbox::stats(&pool).await.unwrap();
        assert_eq!(stats.pending, 6);
    }

    #[tokio::test]
    async fn migrate_is_idempotent_and_safe_from_four_connections_at_once() {
        let Some(pg) = Postgres::shared() else { return };
        let url = pg.fresh_database();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let url = url.clone();
            tasks.spawn(async move {
                let pool = PgPool::connect(&url).await.unwrap();
                outbox::migrate(&pool).await
            });
        }
        let mut results: Vec<(i32, i32)> = tasks
            .join_all()
            .await
            .into_iter()
            .map(|r| {
                let m = r.expect("migrate");
                (m.from, m.to)
            })
            .collect();
        results.sort();
        let v = outbox::SCHEMA_VERSION;
        assert_eq!(results, [(0, v), (v, v), (v, v), (v, v)]);

        let pool = PgPool::connect(&url).await.unwrap();
        let again = outbox::migrate(&pool).await.unwrap();
        assert_eq!((again.from, again.to), (v, v));
        let versions: Vec<i32> =
            query_scalar("SELECT version FROM dub_outbox_schema ORDER BY version")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(versions, (1..=v).collect::<Vec<_>>());

        // The shipped file, applied by a team's own tool, leaves nothing for migrate to do.
        let own = pg.fresh_database();
        let own_pool = PgPool::connect(&own).await.unwrap();
        for (_, sql) in outbox::MIGRATIONS {
            sqlx_core::raw_sql::raw_sql(sql)
                .execute(&own_pool)
                .await
                .unwrap();
        }
        let after_tool = outbox::migrate(&own_pool).await.unwrap();
        assert_eq!((after_tool.from, after_tool.to), (v, v));

        // A database at version 1 (the first release's schema) is upgraded.
        let old = pg.fresh_database();
        let old_pool = PgPool::connect(&old).await.unwrap();
        sqlx_core::raw_sql::raw_sql(outbox::SCHEMA_SQL)
            .execute(&old_pool)
            .await
            .unwrap();
        let upgraded = outbox::migrate(&old_pool).await.unwrap();
        assert_eq!((upgraded.from, upgraded.to), (1, v));
        let budget: Option<String> = query_scalar("SELECT to_regclass('dub_outbox_budget')::text")
            .fetch_one(&old_pool)
            .await
            .unwrap();
        assert_eq!(budget.as_deref(), Some("dub_outbox_budget"));

        // A schema from a newer crate is left alone.
        query("INSERT INTO dub_outbox_schema (version) VALUES ($1)")
            .bind(v + 1)
            .execute(&pool)
            .await
            .unwrap();
        let err = outbox::migrate(&pool).await.unwrap_err();
        assert!(
            matches!(err, OutboxError::SchemaTooNew { found, known } if found == v + 1 && known == v),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn stats_retry_and_prune() {
        let Some((_pg, url, pool)) = database().await else {
            return;
        };
        for i in 0..8 {
            outbox::enqueue(&pool, sale("u", Some(&format!("in_{i}"))))
                .await
                .unwrap();
        }
        // What relays will write, by hand: two delivered long ago, one recently, one failed,
        // one uncertain, one in flight.
        query(
            "UPDATE dub_outbox SET state = CASE id
                WHEN 1 THEN 'delivered' WHEN 2 THEN 'delivered' WHEN 3 THEN 'delivered'
                WHEN 4 THEN 'failed' WHEN 5 THEN 'uncertain' WHEN 6 THEN 'in_flight' END,
             finished_at = CASE WHEN id IN (1, 2) THEN now() - interval '31 days'
                WHEN id IN (3, 4, 5) THEN now() - interval '1 day' END,
             last_error = CASE WHEN id = 4 THEN 'invalid request: amount: too much' END
             WHERE id <= 6",
        )
        .execute(&pool)
        .await
        .unwrap();
        let stats = outbox::stats(&pool).await.unwrap();
        assert_eq!(
            (
                stats.pending,
                stats.in_flight,
                stats.delivered,
                stats.failed,
                stats.uncertain
            ),
            (2, 1, 3, 1, 1)
        );
        let line = stats.to_string();
        assert!(
            line.starts_with("pending=2 in_flight=1 delivered=3 failed=1 uncertain=1"),
            "{line}"
        );

        let mut listener = PgListener::connect(&url).await.unwrap();
        listener.listen(outbox::CHANNEL).await.unwrap();
        assert_eq!(outbox::retry_failed(&pool).await.unwrap(), 1);
        let woken = tokio::time::timeout(Duration::from_secs(10), listener.recv()).await;
        assert!(woken.is_ok(), "retrying wakes the relays");
        let (state, error): (String, Option<String>) =
            sqlx_core::query_as::query_as("SELECT state, last_error FROM dub_outbox WHERE id = 4")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!((state.as_str(), error), ("pending", None));
        assert_eq!(outbox::retry_failed(&pool).await.unwrap(), 0);

        assert_eq!(
            outbox::prune(&pool, outbox::DEFAULT_RETENTION)
                .await
                .unwrap(),
            2
        );
        let left: Vec<i64> = query_scalar("SELECT id FROM dub_outbox ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(
            left,
            [3, 4, 5, 6, 7, 8],
            "recent, failed, uncertain and open rows stay"
        );
        // Any magnitude of retention is accepted.
        assert_eq!(outbox::prune(&pool, Duration::MAX).await.unwrap(), 0);
        assert_eq!(outbox::prune(&pool, Duration::ZERO).await.unwrap(), 1);
    }
}

#[cfg(all(feature = "postgres", feature = "mock"))]
mod relaying {
    use super::events::sale;
    use crate::support::postgres::Postgres;
    use dub::mock::{Fault, MockDub, RetryAfter};
    use dub::outbox::{self, Relay, RelayBuilder, RelayReport, Stats};
    use sqlx_core::query::query;
    use sqlx_postgres::PgPool;
    use std::time::Duration;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;

    /// A sign-up lead.
    fn lead(customer: &str) -> dub::models::TrackLeadRequest {
        super::events::lead(customer, "Sign up")
    }

    /// A relay tuned for tests: quick polls and retries.
    fn relay(pool: &PgPool, mock: &MockDub) -> RelayBuilder {
        Relay::builder(pool.clone(), crate::support::dub(mock))
            .poll_interval(Duration::from_millis(100))
            .backoff(Duration::from_millis(100), Duration::from_millis(500))
            .settle(Duration::from_millis(1_500))
    }

    struct Running {
        stop: oneshot::Sender<()>,
        task: JoinHandle<RelayReport>,
    }

    fn start(builder: RelayBuilder) -> Running {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(builder.build().run_until(async move {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    impl Running {
        async fn stop(self) -> RelayReport {
            let _ = self.stop.send(());
            tokio::time::timeout(Duration::from_secs(60), self.task)
                .await
                .expect("the relay stops")
                .unwrap()
        }
    }

    /// Waits until no row is pending or in flight.
    async fn drained(pool: &PgPool) -> Stats {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(stats) = outbox::stats(pool).await
                && stats.pending == 0
                && stats.in_flight == 0
            {
                return stats;
            }
            assert!(tokio::time::Instant::now() < deadline, "not drained");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn database(pg: &Postgres) -> PgPool {
        let pool = PgPool::connect(&pg.fresh_database()).await.unwrap();
        outbox::migrate(&pool).await.unwrap();
        pool
    }

    async fn row(
        pool: &PgPool,
        id: i64,
    ) -> (String, Option<String>, Option<serde_json::Value>, i32) {
        sqlx_core::query_as::query_as(
            "SELECT state, last_error, response, attempts FROM dub_outbox WHERE id = $1",
        )
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_delivers_each_customer_in_order_and_fails_an_invalid_event_alone() {
        let Some(pg) = Postgres::shared() else { return };
        let pool = database(&pg).await;
        // Dub writes an async lead in the background: a sale sent right after it is refused.
        let mock = MockDub::builder()
            .lead_race(Duration::from_millis(300))
            .start()
            .await
            .unwrap();
        // A producer's broken record first, for a customer with valid events after it.
        query(
            r#"INSERT INTO dub_outbox (event) VALUES
               ('{"type":"sale","customerExternalId":"c0","amount":"lots","invoiceId":"in_bad"}')"#,
        )
        .execute(&pool)
        .await
        .unwrap();
        let customers: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
        for c in &customers {
            outbox::enqueue(&pool, lead(c)).await.unwrap();
            for n in 0..3 {
                outbox::enqueue(&pool, sale(c, Some(&format!("in_{c}_{n}"))))
                    .await
                    .unwrap();
            }
        }
        let running = start(relay(&pool, &mock).max_in_flight(8));
        let stats = drained(&pool).await;
        let report = running.stop().await;
        assert_eq!(
            (stats.delivered, stats.failed, stats.uncertain),
            (24, 1, 0),
            "{stats}"
        );
        assert_eq!((report.delivered, report.failed), (24, 1));

        let (state, error, _, attempts) = row(&pool, 1).await;
        assert_eq!((state.as_str(), attempts), ("failed", 1));
        let error = error.unwrap();
        assert!(error.starts_with("invalid record: amount:"), "{error}");

        // Every event recorded once, and Dub saw each customer's lead before its sales: no
        // sale met the race, because the relay never sends a customer's next event before
        // the one before it is done.
        assert_eq!(mock.leads().len(), 6);
        assert_eq!(mock.sales().len(), 18);
        let mut seen_lead = std::collections::HashSet::new();
        for request in mock.requests() {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            let customer = body["customerExternalId"].as_str().unwrap().to_owned();
            if request.path == "/track/lead" {
                seen_lead.insert(customer);
            } else {
                assert!(seen_lead.contains(&customer), "a sale before its lead");
            }
        }
        let responses: Vec<serde_json::Value> = sqlx_core::query_scalar::query_scalar(
            "SELECT response FROM dub_outbox WHERE state = 'delivered' ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        assert!(responses.iter().all(|r| r["customer"].is_object()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_an_unknown_outcome_an_invoice_waits_out_dubs_race_and_a_plain_sale_is_never_resent()
     {
        let Some(pg) = Postgres::shared() else { return };
        let pool = database(&pg).await;
        // Dub caches an invoice's answer 800 ms after recording it; the relay waits 1.5 s.
        let mock = MockDub::builder()
            .invoice_race(Duration::from_millis(800))
            .start()
            .await
            .unwrap();
        let mut with_invoice = sale("buyer_1", Some("in_once"));
        with_invoice.click_id = Some("cl_1".into());
        let mut without = sale("buyer_2", None);
        without.click_id = Some("cl_2".into());
        let a = outbox::enqueue(&pool, with_invoice)
            .await
            .unwrap()
            .id()
            .unwrap();
        let b = outbox::enqueue(&pool, without).await.unwrap().id().unwrap();
        // Both first attempts are recorded, then answered 503: their outcome is unknown.
        mock.push_faults([Fault::ErrorAfterRecord(503), Fault::ErrorAfterRecord(503)]);
        let running = start(relay(&pool, &mock));
        drained(&pool).await;
        running.stop().await;

        let (state, _, response, attempts) = row(&pool, a).await;
        assert_eq!((state.as_str(), attempts), ("delivered", 2));
        assert_eq!(response.unwrap()["sale"]["invoiceId"], "in_once");
        let (state, error, _, attempts) = row(&pool, b).await;
        assert_eq!((state.as_str(), attempts), ("uncertain", 1));
        assert!(error.unwrap().contains("503"));
        let invoices: Vec<Option<String>> =
            mock.sales().into_iter().map(|s| s.invoice_id).collect();
        assert_eq!(invoices.len(), 2, "each sale recorded once: {invoices:?}");
        assert_eq!(mock.request_count(), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_of_a_relay_that_died_are_taken_over_by_the_safety_rule_and_old_rows_pruned() {
        let Some(pg) = Postgres::shared() else { return };
        let pool = database(&pg).await;
        let mock = MockDub::start().await.unwrap();
        let mut with_invoice = sale("buyer_1", Some("in_orphan"));
        with_invoice.click_id = Some("cl_1".into());
        let mut without = sale("buyer_2", None);
        without.click_id = Some("cl_2".into());
        let a = outbox::enqueue(&pool, with_invoice)
            .await
            .unwrap()
            .id()
            .unwrap();
        let b = outbox::enqueue(&pool, without).await.unwrap().id().unwrap();
        // A relay claimed both, then was killed; its lease ran out a moment ago.
        query(
            "UPDATE dub_outbox SET state = 'in_flight', attempts = 1, locked_by = 'dead',
                locked_until = now() - interval '100 milliseconds'",
        )
        .execute(&pool)
        .await
        .unwrap();
        // And a row delivered long ago, past the retention every relay prunes.
        query(
            r#"INSERT INTO dub_outbox (event, state, finished_at) VALUES
               ('{"type":"sale","customerExternalId":"old","amount":1}', 'delivered',
                now() - interval '31 days')"#,
        )
        .execute(&pool)
        .await
        .unwrap();
        let running = start(relay(&pool, &mock));
        drained(&pool).await;
        let report = running.stop().await;
        assert_eq!(report.taken_over, 2);
        assert_eq!(report.pruned, 1);
        assert_eq!(
            outbox::stats(&pool).await.unwrap().delivered,
            1,
            "the new one"
        );
        let (state, _, _, attempts) = row(&pool, a).await;
        assert_eq!((state.as_str(), attempts), ("delivered", 2));
        let (state, error, _, _) = row(&pool, b).await;
        assert_eq!(state, "uncertain");
        assert!(error.unwrap().contains("not sent again"));
        let sales = mock.sales();
        assert_eq!(sales.len(), 1);
        assert_eq!(sales[0].invoice_id.as_deref(), Some("in_orphan"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_waits_out_a_postgres_crash_and_fails_nothing_for_it() {
        let Some(pg) = Postgres::start() else { return };
        let pool = database(&pg).await;
        let mock = MockDub::start().await.unwrap();
        let enqueue_range = |from: usize, to: usize| {
            let pool = pool.clone();
            async move {
                for i in from..to {
                    let mut s = sale(&format!("u{i}"), Some(&format!("in_{i}")));
                    s.click_id = Some("cl".into());
                    outbox::enqueue(&pool, s).await.unwrap();
                }
            }
        };
        enqueue_range(0, 20).await;
        let running = start(relay(&pool, &mock));
        drained(&pool).await;

        pg.stop_immediate();
        // Dub answers slowly while the database is away, so outcomes wait to be written.
        mock.push_faults([Fault::Delay(Duration::from_millis(200))]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        pg.restart();
        enqueue_range(20, 40).await;
        let stats = drained(&pool).await;
        let report = running.stop().await;
        assert_eq!((stats.delivered, stats.failed, stats.uncertain), (40, 0, 0));
        assert_eq!(report.delivered, 40);
        assert_eq!(report.unwritten, 0);
        assert_eq!(mock.sales().len(), 40);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_relays_on_one_key_pace_together_from_one_budget() {
        let Some(pg) = Postgres::shared() else { return };
        let pool = database(&pg).await;
        let mock = MockDub::start().await.unwrap();
        for i in 0..40 {
            let mut s = sale(&format!("u{i}"), Some(&format!("in_{i}")));
            s.click_id = Some("cl".into());
            outbox::enqueue(&pool, s).await.unwrap();
        }
        // 1,200 a minute at 97%: a turn every 51.5 ms, for all three together.
        let per_minute = 1_200;
        let turn = Duration::from_secs_f64(60.0 / (f64::from(per_minute) * 0.97));
        let started = tokio::time::Instant::now();
        let relays: Vec<Running> = (0..3)
            .map(|_| start(relay(&pool, &mock).shared_rate_limit(per_minute)))
            .collect();
        drained(&pool).await;
        let elapsed = started.elapsed();
        for r in relays {
            r.stop().await;
        }
        assert_eq!(mock.sales().len(), 40);
        // The 40th turn is 39 turns after the first, whichever relay took it: alone, each
        // relay would have needed a third of that. (A lower bound: a slow machine only adds.)
        assert!(elapsed >= turn * 39, "{elapsed:?} for 40 turns of {turn:?}");
        // Keyed by a hash of the token, never the token.
        let keys: Vec<String> =
            sqlx_core::query_scalar::query_scalar("SELECT key FROM dub_outbox_budget")
                .fetch_all(&pool)
                .await
                .unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].len(), 64);
        assert!(keys[0].chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!keys[0].contains(mock.token()));
    }

    /// Not given the limit, the relays learn it together: one 429 naming the key's limit, seen
    /// by one relay, paces the others too, which never saw a refusal themselves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn relays_not_given_the_limit_learn_it_together_from_one_429() {
        let Some(pg) = Postgres::shared() else { return };
        let pool = database(&pg).await;
        let per_minute = 1_200;
        // Limits like Dub (far above what the test sends) so that its 429 names the limit.
        let mock = MockDub::builder()
            .rate_limit(per_minute)
            .start()
            .await
            .unwrap();
        mock.push_fault(Fault::RateLimited(RetryAfter::Seconds(1)));
        let mut first = sale("first", Some("in_first"));
        first.click_id = Some("cl".into());
        outbox::enqueue(&pool, first).await.unwrap();
        let learner = start(relay(&pool, &mock));
        drained(&pool).await;
        let learned: Option<i32> =
            sqlx_core::query_scalar::query_scalar("SELECT limit_per_minute FROM dub_outbox_budget")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(learned, Some(1_200));

        // Two relays that never saw the 429, and the one that did (which may start on the
        // events as soon as each commits).
        let turn = Duration::from_secs_f64(60.0 / (per_minute as f64 * 0.97));
        let started = tokio::time::Instant::now();
        let others: Vec<Running> = (0..2).map(|_| start(relay(&pool, &mock))).collect();
        for i in 0..40 {
            let mut s = sale(&format!("u{i}"), Some(&format!("in_{i}")));
            s.click_id = Some("cl".into());
            outbox::enqueue(&pool, s).await.unwrap();
        }
        drained(&pool).await;
        let elapsed = started.elapsed();
        let mut reports = vec![learner.stop().await];
        for r in others {
            reports.push(r.stop().await);
        }
        assert_eq!(mock.sales().len(), 41);
        // No window refusal: the one 429 was the fault's.
        assert_eq!(mock.rate_limited_count(), 0);
        // The others delivered their share at the shared pace: 40 turns apart by one budget.
        // Unpaced, they would have taken the 40 in a fraction of one turn each.
        assert!(
            reports[1].delivered + reports[2].delivered > 0,
            "{reports:?}"
        );
        assert!(elapsed >= turn * 39, "{elapsed:?} for 40 turns of {turn:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_committed_event_wakes_an_idle_relay_long_before_its_next_poll() {
        let Some(pg) = Postgres::shared() else { return };
        let pool = database(&pg).await;
        let mock = MockDub::start().await.unwrap();
        let running = start(relay(&pool, &mock).poll_interval(Duration::from_secs(600)));
        // Idle: it has polled once and listens.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut s = sale("u", Some("in_wake"));
        s.click_id = Some("cl".into());
        let mut tx = pool.begin().await.unwrap();
        outbox::enqueue(&mut *tx, s).await.unwrap();
        tx.commit().await.unwrap();
        // Far sooner than the 10-minute poll: only the notification can have woken it.
        tokio::time::timeout(Duration::from_secs(60), drained(&pool))
            .await
            .unwrap();
        assert_eq!(mock.sales().len(), 1);
        running.stop().await;
    }

    /// Rows of the outbox read by queries in `database` so far (index entries and sequential
    /// scans of `dub_outbox`), once every other connection to it is gone: a backend reports
    /// its counts when it exits.
    fn rows_read(pg: &Postgres, database: &str) -> i64 {
        for _ in 0..200 {
            let others = pg.psql(
                database,
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            );
            if others == "0" {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        pg.psql(
            database,
            "SELECT (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
                     WHERE relname = 'dub_outbox')
                  + (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables
                     WHERE relname = 'dub_outbox')",
        )
        .parse()
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_reads_the_due_rows_not_the_delivered_ones_kept_for_retention() {
        let Some(pg) = Postgres::shared() else { return };
        let url = pg.fresh_database();
        let name = url.rsplit('/').next().unwrap().to_owned();
        // 30 days of delivered rows stay in the table (the default retention); 20 are due.
        let setup = PgPool::connect(&url).await.unwrap();
        outbox::migrate(&setup).await.unwrap();
        query(
            r#"INSERT INTO dub_outbox (event)
               SELECT jsonb_build_object('type', 'lead', 'clickId', 'cl_1',
                   'eventName', 'Sign up', 'customerExternalId', 'old_' || i)
               FROM generate_series(1, 3000) AS i"#,
        )
        .execute(&setup)
        .await
        .unwrap();
        query("UPDATE dub_outbox SET state = 'delivered', finished_at = now()")
            .execute(&setup)
            .await
            .unwrap();
        for i in 0..20 {
            outbox::enqueue(&setup, lead(&format!("new_{i}")))
                .await
                .unwrap();
        }
        // As autovacuum leaves a table between bursts of writes.
        query("VACUUM ANALYZE dub_outbox")
            .execute(&setup)
            .await
            .unwrap();
        setup.close().await;
        let before = rows_read(&pg, &name);

        let mock = MockDub::start().await.unwrap();
        let pool = PgPool::connect(&url).await.unwrap();
        let running = start(relay(&pool, &mock).max_in_flight(4));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while mock.leads().len() < 20 {
            assert!(tokio::time::Instant::now() < deadline, "not delivered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = running.stop().await;
        pool.close().await;
        assert_eq!(report.delivered, 20);
        let read = rows_read(&pg, &name) - before;
        // Each claim, outcome and poll reads a few rows per event; a claim that walked the
        // delivered rows would read 3,000 each time.
        assert!(
            read < 20 * 50,
            "the relay read {read} rows of the outbox to deliver 20 events beside 3,000 delivered"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_429_longer_than_an_attempt_may_wait_holds_the_shared_budget_only_that_long() {
        let Some(pg) = Postgres::shared() else { return };
        let pool = database(&pg).await;
        let mock = MockDub::start().await.unwrap();
        // Sales Dub does not deduplicate: one sent too close to its attempt's cut would time
        // out and end uncertain.
        for i in 0..20 {
            let mut s = sale(&format!("held_{i}"), None);
            s.click_id = Some("cl".into());
            outbox::enqueue(&pool, s).await.unwrap();
        }
        // Dub holds the key back for 4 s; an attempt may wait at most 1 s (half the lease)
        // for its turn, so the attempts meanwhile are put back unsent.
        mock.push_fault(Fault::RateLimited(RetryAfter::Seconds(4)));
        let started = tokio::time::Instant::now();
        let running = start(
            relay(&pool, &mock)
                .lease(Duration::from_secs(2))
                .max_in_flight(8)
                .shared_rate_limit(600),
        );
        drained(&pool).await;
        let report = running.stop().await;
        assert_eq!(
            (report.delivered, report.uncertain, report.failed),
            (20, 0, 0),
            "{report:?}"
        );
        assert_eq!(mock.sales().len(), 20);
        // The refused request and one each: none sent at the edge of its attempt's time.
        assert_eq!(mock.requests().len(), 21);
        // A claim that got no turn is no attempt: only the refused row has two.
        let attempts: i64 =
            sqlx_core::query_scalar::query_scalar("SELECT sum(attempts)::bigint FROM dub_outbox")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(attempts, 21);
        assert_eq!(report.retried, 1, "{report:?}");
        // After the hold the 20 turns take 2 s; had each unsent attempt kept its turn, the
        // next one would have run away from the clock (`drained` gives up after 60 s).
        assert!(started.elapsed() >= Duration::from_secs(4));
    }

    /// A database migrated by an older version of the crate (no limit column in the budget):
    /// the relay delivers unpaced rather than stall, and `migrate` brings it up to date.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_on_an_older_schema_delivers_unpaced_until_migrated() {
        let Some(pg) = Postgres::shared() else { return };
        let pool = PgPool::connect(&pg.fresh_database()).await.unwrap();
        for (version, sql) in &outbox::MIGRATIONS[..2] {
            assert!(*version <= 2);
            let mut conn = pool.acquire().await.unwrap();
            sqlx_core::executor::Executor::execute(&mut *conn, sqlx_core::raw_sql::raw_sql(sql))
                .await
                .unwrap();
        }
        let mock = MockDub::start().await.unwrap();
        for i in 0..5 {
            let mut s = sale(&format!("old_{i}"), Some(&format!("in_old_{i}")));
            s.click_id = Some("cl".into());
            outbox::enqueue(&pool, s).await.unwrap();
        }
        let running = start(relay(&pool, &mock).shared_rate_limit(600));
        drained(&pool).await;
        let report = running.stop().await;
        assert_eq!(report.delivered, 5, "{report:?}");
        let migrated = outbox::migrate(&pool).await.unwrap();
        assert_eq!((migrated.from, migrated.to), (2, outbox::SCHEMA_VERSION));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_the_clients_limiter_cannot_start_in_time_is_retried_at_its_next_turn() {
        let Some(pg) = Postgres::shared() else { return };
        let pool = database(&pg).await;
        let mock = MockDub::start().await.unwrap();
        for i in 0..10 {
            outbox::enqueue(&pool, lead(&format!("slow_{i}")))
                .await
                .unwrap();
        }
        // The client paces at about one request a second; an attempt waits for a turn at most
        // two thirds of half the 2 s lease, so most attempts end unsent, again and again.
        let dub = crate::support::client(&mock.url())
            .rate_limit(dub::RateLimit::per_minute(60))
            .build()
            .unwrap();
        let running = start(
            Relay::builder(pool.clone(), dub)
                .poll_interval(Duration::from_millis(100))
                .backoff(Duration::from_millis(100), Duration::from_secs(300))
                .lease(Duration::from_secs(2))
                .max_in_flight(8),
        );
        // How far ahead any pending row is due, at its furthest, while they drain.
        let mut furthest = 0.0f64;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while mock.leads().len() < 10 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not delivered; rows were due up to {furthest:.1} s ahead"
            );
            let ahead: f64 = sqlx_core::query_scalar::query_scalar(
                "SELECT coalesce(max(extract(epoch FROM next_attempt_at - now())), 0)::float8
                 FROM dub_outbox WHERE state = 'pending'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            furthest = furthest.max(ahead);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let report = running.stop().await;
        assert_eq!(report.delivered, 10);
        // A claim the limiter could not start is no attempt: one each.
        let attempts: i64 =
            sqlx_core::query_scalar::query_scalar("SELECT sum(attempts)::bigint FROM dub_outbox")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(attempts, 10, "{report:?}");
        // Nothing was sent, so each is due at the limiter's next turn (about a second away),
        // not after a backoff doubling with its attempts (which reach 10 or more here).
        assert!(furthest < 3.0, "a row not sent was put off {furthest:.1} s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_turn_after_a_hold_leaves_the_request_time_so_a_plain_sale_is_not_left_uncertain() {
        let Some(pg) = Postgres::shared() else { return };
        let pool = database(&pg).await;
        let mock = MockDub::start().await.unwrap();
        outbox::enqueue(&pool, lead("held_lead")).await.unwrap();
        let mut plain = sale("held_sale", None);
        plain.click_id = Some("cl".into());
        outbox::enqueue(&pool, plain).await.unwrap();
        // The lead meets a 429 holding the key back 5 s; the sale, claimed meanwhile, may run
        // until half its 12 s lease (6 s), its request for two thirds of what is left then, and
        // Dub takes 1.3 s to answer it. Sent when the hold ends, with 1 s left (a 0.67 s
        // deadline), it would time out: possibly recorded, so uncertain, never resent. It must
        // wait for its turn only while the request still has time.
        mock.push_faults([
            Fault::RateLimited(RetryAfter::Seconds(5)),
            Fault::Delay(Duration::from_millis(1_300)),
        ]);
        let running = start(
            relay(&pool, &mock)
                .lease(Duration::from_secs(12))
                .max_in_flight(1)
                .shared_rate_limit(600),
        );
        let stats = drained(&pool).await;
        running.stop().await;
        assert_eq!(
            (stats.delivered, stats.uncertain, stats.failed),
            (2, 0, 0),
            "{stats}"
        );
        assert_eq!(mock.sales().len(), 1);
    }
}
