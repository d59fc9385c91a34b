//! Cluster mode (PROTOCOL.md §19) on the real 3-node cluster of scripts/nats-cluster.sh:
//! `car-replay --nats … --stream S <command>` answers exactly what the same command answers
//! on a sled data directory holding the same events; `export --to DIR` writes a sled log
//! that every command then reads offline, record for record the same; a missing stream is
//! reported (exit 3) and not created.
//!
//! Skipped (with a `SKIPPED` line) unless `CAR_TEST_NATS_URLS` names the cluster, as
//! scripts/test.sh does. Each test writes a stream of its own.

use car_events::log::{JetStreamLog, JetStreamOptions};
use car_events::{Envelope, EventLog};

use crate::fixtures::{DataDir, car_replay, golden_envelopes, golden_v7_records};

/// The cluster's URLs, or `None` after printing why the test is skipped.
fn cluster(test: &str) -> Option<String> {
    match std::env::var("CAR_TEST_NATS_URLS") {
        Ok(urls) if !urls.trim().is_empty() => Some(urls),
        _ => {
            println!("SKIPPED cluster::{test}: CAR_TEST_NATS_URLS not set");
            None
        }
    }
}

fn stream_name(test: &str) -> String {
    let unique = uuid::Uuid::new_v4().simple().to_string();
    format!("R_{test}_{}", &unique[..12])
}

/// A fresh stream holding `envelopes`, written through the daemon's own log backend.
fn stream_with(urls: &str, test: &str, envelopes: &[Envelope]) -> String {
    let stream = stream_name(test);
    let urls: Vec<String> = urls.split(',').map(str::to_owned).collect();
    let log = JetStreamLog::open(JetStreamOptions::new(urls, stream.clone())).unwrap();
    for chunk in envelopes.chunks(64) {
        log.append(chunk).unwrap();
    }
    assert_eq!(log.head(), envelopes.len() as u64);
    stream
}

#[test]
fn every_command_reads_the_stream_as_it_reads_a_data_directory_with_the_same_events() {
    let Some(urls) =
        cluster("every_command_reads_the_stream_as_it_reads_a_data_directory_with_the_same_events")
    else {
        return;
    };
    let envelopes = golden_envelopes();
    let stream = stream_with(&urls, "same", &envelopes);
    let sled = DataDir::with_envelopes(&envelopes);
    let on_stream = |args: &[&str]| {
        let mut all = vec!["--nats", urls.as_str(), "--stream", stream.as_str()];
        all.extend_from_slice(args);
        car_replay(&all)
    };
    for args in [
        &["verify"][..],
        &["state", "--json"],
        &["events"],
        &["runs", "--json", "--evicted"],
        &["stats", "--json"],
        &["memory"],
    ] {
        let from_stream = on_stream(args);
        let from_sled = sled.run(args);
        assert_eq!(
            from_stream.code, from_sled.code,
            "{args:?}: {}",
            from_stream.stderr
        );
        if args[0] == "stats" {
            // Sizes on disk differ between two sled copies; the counts may not.
            let (mut a, mut b) = (from_stream.json(), from_sled.json());
            for v in [&mut a, &mut b] {
                v.as_object_mut().unwrap().remove("size_on_disk");
            }
            assert_eq!(a, b, "{args:?}");
        } else if args[0] == "verify" {
            // The first line names what was read, the last one the time taken.
            let body = |out: &str| {
                let lines: Vec<&str> = out.lines().collect();
                lines[1..lines.len() - 1].join("\n")
            };
            assert_eq!(body(&from_stream.stdout), body(&from_sled.stdout));
            assert!(
                from_stream
                    .stdout
                    .starts_with(&format!("verify stream {stream} at ")),
                "{}",
                from_stream.stdout
            );
        } else {
            assert_eq!(from_stream.stdout, from_sled.stdout, "{args:?}");
        }
    }
    assert_eq!(on_stream(&["verify"]).expect(0).code, 0);
}

#[test]
fn export_writes_a_sled_log_that_every_command_reads_offline() {
    let Some(urls) = cluster("export_writes_a_sled_log_that_every_command_reads_offline") else {
        return;
    };
    let envelopes = golden_envelopes();
    let stream = stream_with(&urls, "export", &envelopes);
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("copy");
    let to_text = to.to_str().unwrap();
    let exported = car_replay(&[
        "--nats", &urls, "--stream", &stream, "export", "--to", to_text,
    ])
    .expect(0);
    assert!(
        exported
            .stderr
            .contains(&format!("exported {} events", envelopes.len())),
        "{}",
        exported.stderr
    );
    let sled = DataDir::with_envelopes(&envelopes);
    let offline = car_replay(&["--data-dir", to_text, "events"]).expect(0);
    assert_eq!(offline.stdout, sled.run(&["events"]).expect(0).stdout);
    car_replay(&["--data-dir", to_text, "verify"]).expect(0);
    // The envelopes themselves, seq, time and id included.
    let back = car_events::SledLog::open(
        to.join("log"),
        car_events::OpenOptions {
            create: false,
            read_only: true,
            ..car_events::OpenOptions::default()
        },
    )
    .unwrap();
    let copied: Vec<Envelope> = back.read_from(1).map(Result::unwrap).collect();
    assert_eq!(copied, envelopes);
    // A second export into the same directory is refused: it would mix two logs.
    car_replay(&[
        "--nats", &urls, "--stream", &stream, "export", "--to", to_text,
    ])
    .expect(64);
}

#[test]
fn a_missing_stream_is_reported_and_not_created() {
    let Some(urls) = cluster("a_missing_stream_is_reported_and_not_created") else {
        return;
    };
    let stream = stream_name("missing");
    let run = car_replay(&["--nats", &urls, "--stream", &stream, "verify"]).expect(3);
    assert!(
        run.stderr.contains(&format!("no stream {stream}")),
        "{}",
        run.stderr
    );
    let again = car_replay(&["--nats", &urls, "--stream", &stream, "verify"]).expect(3);
    assert!(again.stderr.contains("no stream"), "{}", again.stderr);
    car_replay(&["--stream", &stream, "export", "--to", "/nonexistent"]).expect(64);
}

#[test]
fn verify_and_trace_read_a_lost_gateway_and_its_gateway_lost_run() {
    // Needs no cluster: the golden-v7 log as a data directory.
    let data = DataDir::with_records(&golden_v7_records());
    let report = data.run(&["verify", "--json"]).expect(0).json();
    assert_eq!(report["ok"], true, "{report}");
    let trace = data.run(&["trace", "run-a"]).expect(0).stdout;
    assert!(trace.contains("incomplete: gateway_lost"), "{trace}");
    let events = data
        .run(&["events", "--kind", "gateway.lost"])
        .expect(0)
        .json_lines();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["gateway_id"], "gw-a");
    assert_eq!(events[0]["data"]["declared_by"], "gw-b");
}
