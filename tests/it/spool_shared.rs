//! Two trackers sharing one spool (as two processes do): a key handed to both is sent once,
//! and the receipts of both resolve, whichever tracker delivered it.
#![cfg(all(feature = "spool", feature = "mock"))]

use std::time::Duration;

use dub::Dub;
use dub::mock::{Fault, MockDub, RandomFaults};
use dub::tracker::{Event, Outcome};

fn client(mock: &MockDub) -> Dub {
    Dub::builder()
        .token(mock.token())
        .server_url(mock.url())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_resolves_when_another_tracker_on_the_spool_delivers_its_event() {
    let mock = MockDub::start().await.unwrap();
    // Slow deliveries: the two trackers claim each other's rows.
    mock.random_faults(RandomFaults::new(7, 1.0).kinds([Fault::Delay(Duration::from_millis(30))]));
    let dir = std::env::temp_dir().join(format!(
        "dub-spool-shared-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("shared.sqlite");
    let dub = client(&mock);
    let a = dub.tracker().spool(&path).max_in_flight(4).start().unwrap();
    let b = dub.tracker().spool(&path).max_in_flight(4).start().unwrap();
    // Sales without invoice id: Dub would record each one again if it were sent twice.
    let events: Vec<(String, Event)> = (0..40)
        .map(|c| {
            let event: Event = crate::support::sale_for(&format!("shared_{c}"), None).into();
            (format!("key_{c}"), event)
        })
        .collect();
    let mut receipts = Vec::new();
    for (key, event) in &events {
        receipts.push(a.send_with_key(key.clone(), event.clone()).await.unwrap());
        receipts.push(b.send_with_key(key.clone(), event.clone()).await.unwrap());
    }
    for receipt in receipts {
        let outcome = tokio::time::timeout(Duration::from_secs(30), receipt)
            .await
            .expect("a receipt never resolved: the other tracker delivered its event");
        assert!(matches!(outcome, Outcome::Delivered(_)), "{outcome:?}");
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.delivered + sb.delivered, 40, "{sa:?} {sb:?}");
    assert!(sa.delivered > 0 && sb.delivered > 0, "{sa:?} {sb:?}");
    assert_eq!(mock.request_count(), 40, "an event was sent twice");
    assert!(a.knows_key("key_0").unwrap());
    assert!(!a.knows_key("key_x").unwrap());
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
