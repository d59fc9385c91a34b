//! `JetStreamLog` against a real 3-node NATS cluster (scripts/nats-cluster.sh): appends,
//! reads, reopening, conditional appends, retried publishes, a second gateway's view, and
//! the refusals of §19. Each test uses a stream of its own.
//!
//! Skipped (with a `SKIPPED` line) unless `CAR_TEST_NATS_URLS` names the cluster, as
//! scripts/test.sh does.

use std::sync::Arc;
use std::time::Duration;

use car_events::event::{DaemonStopped, Event};
use car_events::log::jetstream::{JetStreamLog, JetStreamOptions, MAX_BATCH_EVENTS};
use car_events::{Envelope, EventLog, LogError, SCHEMA_VERSION, Seq, codec};
use chrono::{DateTime, Utc};

/// The cluster's URLs, or `None` after printing why the test is skipped.
fn cluster(test: &str) -> Option<Vec<String>> {
    match std::env::var("CAR_TEST_NATS_URLS") {
        Ok(urls) if !urls.trim().is_empty() => {
            Some(urls.split(',').map(|u| u.trim().to_owned()).collect())
        }
        _ => {
            println!("SKIPPED {test}: CAR_TEST_NATS_URLS not set");
            None
        }
    }
}

/// A stream name no other test (or earlier run on the same cluster) uses.
fn stream_name(test: &str) -> String {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!("T_{test}_{}", &unique[..12])
}

fn options(urls: &[String], stream: &str) -> JetStreamOptions {
    JetStreamOptions::new(urls.to_vec(), stream)
}

fn env(seq: Seq, reason: &str) -> Envelope {
    Envelope {
        seq,
        event_id: uuid::Uuid::new_v4(),
        ts: DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(seq as i64),
        schema_version: SCHEMA_VERSION,
        event: Event::DaemonStopped(DaemonStopped {
            reason: reason.into(),
        }),
    }
}

fn reasons(log: &dyn EventLog) -> Vec<String> {
    log.read_from(1)
        .map(|e| match e.unwrap().event {
            Event::DaemonStopped(d) => d.reason,
            other => panic!("{other:?}"),
        })
        .collect()
}

/// A runtime for the raw NATS client the tests use beside the log.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn appends_are_read_back_in_order_and_survive_reopening() {
    let Some(urls) = cluster("jetstream::appends_are_read_back_in_order_and_survive_reopening")
    else {
        return;
    };
    let stream = stream_name("reopen");
    let log = JetStreamLog::open(options(&urls, &stream)).unwrap();
    assert_eq!(log.head(), 0);
    assert!(log.is_shared());
    let one = log.append(&[env(1, "one")]).unwrap();
    assert_eq!((one.first, one.count), (1, 1));
    // A batch of several events is one atomic batch at the next seqs.
    let batch: Vec<_> = (2..=6).map(|seq| env(seq, &format!("b{seq}"))).collect();
    let range = log.append(&batch).unwrap();
    assert_eq!((range.first, range.count), (2, 5));
    assert_eq!(log.head(), 6);
    assert_eq!(log.get(4).unwrap().unwrap(), batch[2]);
    assert_eq!(log.get(7).unwrap(), None);
    assert_eq!(reasons(&log), ["one", "b2", "b3", "b4", "b5", "b6"]);
    // Out of sequence is the caller's bug, refused before anything is sent.
    assert!(matches!(
        log.append(&[env(7, "x"), env(9, "y")]),
        Err(LogError::OutOfSequence { .. })
    ));
    drop(log);

    let reopened = JetStreamLog::open(options(&urls, &stream)).unwrap();
    assert_eq!(reopened.head(), 6, "the mirror catches up at open");
    assert_eq!(reasons(&reopened), ["one", "b2", "b3", "b4", "b5", "b6"]);
    assert_eq!(reopened.get(1).unwrap().unwrap().seq, 1);
    reopened.append(&[env(7, "seven")]).unwrap();
    assert_eq!(reopened.head(), 7);
}

#[test]
fn an_append_at_a_taken_seq_is_a_conflict_and_stores_nothing() {
    let Some(urls) =
        cluster("jetstream::an_append_at_a_taken_seq_is_a_conflict_and_stores_nothing")
    else {
        return;
    };
    let stream = stream_name("conflict");
    let a = JetStreamLog::open(options(&urls, &stream)).unwrap();
    let b = JetStreamLog::open(options(&urls, &stream)).unwrap();
    a.append(&[env(1, "a1"), env(2, "a2")]).unwrap();
    // B decided against an empty log: its seq 1 is taken.
    let err = b.append(&[env(1, "b1")]).unwrap_err();
    assert!(matches!(err, LogError::Conflict { head: 2 }), "{err:?}");
    let err = b
        .append(&[env(1, "b1"), env(2, "b2"), env(3, "b3")])
        .unwrap_err();
    assert!(matches!(err, LogError::Conflict { head: 2 }), "{err:?}");
    assert!(!err.is_unavailable());
    // A conflict returns once B's mirror holds the winner: B can decide again at once.
    assert_eq!(b.head(), 2);
    assert_eq!(reasons(&b), ["a1", "a2"]);
    b.append(&[env(3, "b3")]).unwrap();
    // A's view follows B's append.
    let mut head = a.watch_head();
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h >= 3))
            .await
            .expect("A's mirror sees B's append")
            .unwrap();
    });
    assert_eq!(reasons(&a), ["a1", "a2", "b3"]);
}

#[test]
fn a_second_log_sees_the_first_s_appends_through_its_head() {
    let Some(urls) = cluster("jetstream::a_second_log_sees_the_first_s_appends_through_its_head")
    else {
        return;
    };
    let stream = stream_name("follow");
    let a = JetStreamLog::open(options(&urls, &stream)).unwrap();
    let b = JetStreamLog::open(options(&urls, &stream)).unwrap();
    let mut head = b.watch_head();
    let mut seen = Vec::new();
    let rt = runtime();
    for seq in 1..=20 {
        a.append(&[env(seq, &format!("e{seq}"))]).unwrap();
        let now = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), head.wait_for(|h| *h >= seq))
                .await
                .expect("B's head follows A's appends")
                .map(|h| *h)
                .unwrap()
        });
        seen.push(now);
    }
    assert!(seen.windows(2).all(|w| w[0] <= w[1]));
    assert_eq!(b.head(), 20);
    assert_eq!(reasons(&b), reasons(&a));
    for seq in 1..=20 {
        assert_eq!(b.get(seq).unwrap(), a.get(seq).unwrap());
    }
}

/// A publish whose ack was lost is sent again with the same `Nats-Msg-Id`: the stream's
/// answer (a duplicate, or the batch found at its seqs) makes the append succeed without
/// storing anything twice.
#[test]
fn a_publish_retried_after_a_lost_ack_stores_nothing_twice() {
    let Some(urls) = cluster("jetstream::a_publish_retried_after_a_lost_ack_stores_nothing_twice")
    else {
        return;
    };
    let stream = stream_name("dup");
    let log = JetStreamLog::open(options(&urls, &stream)).unwrap();
    let subject = log.options().subject();
    log.append(&[env(1, "first")]).unwrap();
    // The first attempt of seq 2 reached the stream, but its ack never came back.
    let lost = env(2, "lost ack");
    let rt = runtime();
    rt.block_on(async {
        let client = async_nats::connect(urls[0].as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", lost.event_id.to_string().as_str());
        headers.insert("Nats-Expected-Last-Sequence", "1");
        let ack = js
            .publish_with_headers(
                subject.clone(),
                headers,
                codec::encode(&lost).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(ack.sequence, 2);
    });
    // The retry: same envelope, same id.
    let range = log.append(std::slice::from_ref(&lost)).unwrap();
    assert_eq!((range.first, range.count), (2, 1));
    // A batch whose first attempt landed is recognised by its bytes.
    let batch = [env(3, "b3"), env(4, "b4")];
    log.append(&batch).unwrap();
    let again = JetStreamLog::open(options(&urls, &stream)).unwrap();
    assert_eq!(again.append(&batch).unwrap().first, 3);
    assert_eq!(reasons(&again), ["first", "lost ack", "b3", "b4"]);
    let stored = rt.block_on(async {
        let client = async_nats::connect(urls[0].as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(&stream).await.unwrap();
        stream.info().await.unwrap().state.messages
    });
    assert_eq!(stored, 4, "nothing was stored twice");
}

#[test]
fn a_stream_with_one_replica_is_refused_unless_allowed() {
    let Some(urls) = cluster("jetstream::a_stream_with_one_replica_is_refused_unless_allowed")
    else {
        return;
    };
    let stream = stream_name("r1");
    let subject = options(&urls, &stream).subject();
    runtime().block_on(async {
        let client = async_nats::connect(urls[0].as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![subject],
            num_replicas: 1,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            allow_atomic_publish: true,
            ..Default::default()
        })
        .await
        .unwrap();
    });
    let err = JetStreamLog::open(options(&urls, &stream)).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, LogError::Unfit(_)), "{err:?}");
    assert!(
        message.contains(&stream)
            && message.contains("1 replica")
            && message.contains("--allow-unsafe-stream"),
        "{message}"
    );
    let mut unsafe_options = options(&urls, &stream);
    unsafe_options.allow_unsafe_stream = true;
    let log = JetStreamLog::open(unsafe_options).unwrap();
    log.append(&[env(1, "dev")]).unwrap();
    assert_eq!(log.head(), 1);
}

#[test]
fn a_created_stream_has_three_replicas_and_no_limits() {
    let Some(urls) = cluster("jetstream::a_created_stream_has_three_replicas_and_no_limits") else {
        return;
    };
    let stream = stream_name("created");
    let _log = JetStreamLog::open(options(&urls, &stream)).unwrap();
    let config = runtime().block_on(async {
        let client = async_nats::connect(urls[0].as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.get_stream(&stream)
            .await
            .unwrap()
            .cached_info()
            .config
            .clone()
    });
    assert_eq!(config.num_replicas, 3);
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
    assert!(config.deny_delete && config.deny_purge && config.allow_direct);
    assert!(config.allow_atomic_publish);
    assert!(config.max_messages <= 0 && config.max_bytes <= 0 && config.max_age.is_zero());
}

#[test]
fn more_events_than_one_atomic_batch_are_refused_whole() {
    let Some(urls) = cluster("jetstream::more_events_than_one_atomic_batch_are_refused_whole")
    else {
        return;
    };
    let log = JetStreamLog::open(options(&urls, &stream_name("big"))).unwrap();
    let batch: Vec<_> = (1..=MAX_BATCH_EVENTS as Seq + 1)
        .map(|seq| env(seq, "x"))
        .collect();
    assert!(matches!(
        log.append(&batch),
        Err(LogError::BatchTooLarge { .. })
    ));
    assert_eq!(log.head(), 0);
    let range = log.append(&batch[..MAX_BATCH_EVENTS]).unwrap();
    assert_eq!(range.count, MAX_BATCH_EVENTS as u64);
    assert_eq!(log.read_from(1).count(), MAX_BATCH_EVENTS);
}

#[test]
fn unreachable_servers_are_named_in_the_error() {
    // Needs no cluster: nothing listens on these ports (1 and 9 are reserved, unprivileged
    // processes cannot bind them, and no test does).
    let urls = vec![
        "nats://127.0.0.1:1".to_owned(),
        "nats://127.0.0.1:9".to_owned(),
    ];
    let mut options = JetStreamOptions::new(urls, "CAR");
    options.connect_timeout = Duration::from_secs(1);
    let err = JetStreamLog::open(options).unwrap_err();
    let message = err.to_string();
    assert!(err.is_unavailable(), "{err:?}");
    assert!(
        message.contains("nats://127.0.0.1:1,nats://127.0.0.1:9"),
        "{message}"
    );
}

/// Reads keep being served while appends wait on the cluster: the log stays a shared
/// handle that other threads read from during an append.
#[test]
fn reads_are_served_locally_during_appends() {
    let Some(urls) = cluster("jetstream::reads_are_served_locally_during_appends") else {
        return;
    };
    let log = Arc::new(JetStreamLog::open(options(&urls, &stream_name("reads"))).unwrap());
    log.append(&[env(1, "one")]).unwrap();
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            for _ in 0..1000 {
                assert_eq!(log.get(1).unwrap().unwrap().seq, 1);
            }
        })
    };
    for seq in 2..=50 {
        log.append(&[env(seq, "more")]).unwrap();
    }
    reader.join().unwrap();
    assert_eq!(log.head(), 50);
}
