//! `cargo bench -p car-events`: how fast the event log appends durably and replays, next
//! to baselines measured in the same run on the same disk.
//!
//! Why these numbers: every request the daemon acknowledges waits for a durable append, so
//! append latency and throughput under concurrency bound the daemon; and start-up replays
//! the whole log, so scan speed bounds recovery time. A figure alone says little about a
//! given machine, so each is printed beside what the same machine does without us:
//!
//! - **ours**: `Writer<()>` over [`SledLog`]: N tokio tasks each append single small
//!   events in a loop; the writer groups whatever is queued into one batch and one flush.
//! - **(a) raw sled**: N threads each `insert` + `flush` one record: the obvious way to use
//!   sled durably, without group commit. (Flattering to sled: its `flush` on Linux is only
//!   `sync_file_range`, while ours also `fdatasync`s; see `docs/event-log.md`.)
//! - **(b) file + fdatasync**: the same `Writer<()>` (so batching is identical) over a
//!   bench-only [`EventLog`] that appends the encoded records to a plain file and calls
//!   `sync_data` once per batch: roughly the disk's limit for this scheme.
//! - **replay**: a full `read_from(1)` of a 1,000,000-event log decoding every record,
//!   next to a raw sled iteration that decodes nothing.
//!
//! Allocator: mimalloc, as in `car-replay` (see [`ALLOCATOR`]).
//!
//! The logs live under cargo's `CARGO_TARGET_TMPDIR` (inside `target/`, so on the
//! project's disk, not on a tmpfs `/tmp`). `CAR_BENCH_QUICK=1` shortens every phase (for a
//! smoke run); `CAR_BENCH_SECS` sets the seconds per append measurement;
//! `CAR_BENCH_ONLY=append` or `=replay` runs one half; `CAR_BENCH_LEVELS=64,512` picks
//! the concurrency levels.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use car_events::event::TurnsRecorded;
use car_events::log::{RawIter, check_sequence};
use car_events::{
    Envelope, Event, EventLog, JsonText, LogError, OpenOptions, SCHEMA_VERSION, Seq, SeqRange,
    SledLog, Stamper, Writer,
};
use car_events::{codec, scan};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use tokio::sync::watch;
use uuid::Uuid;

/// mimalloc, as `car-replay` runs the same scan: a pipelined scan allocates decoded events
/// on one thread and frees them on another, which glibc's malloc serialises (one run side
/// by side: cold pipelined scan 545 k events/s under glibc, 965 k under mimalloc). Every
/// system in this bench runs under the same allocator, so its ratios stay like for like.
/// The daemon keeps the system allocator (see `docs/gateway.md`); its start-up replay is
/// measured end to end there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The concurrency levels of the brief: one client, a few, a busy daemon, a storm.
const LEVELS: [usize; 4] = [1, 8, 64, 512];
/// Seconds per append measurement in full mode: long enough for thousands of batches at
/// the slowest level, short enough that 12 measurements take well under a minute.
const FULL_SECS: f64 = 3.0;
/// Seconds per append measurement with `CAR_BENCH_QUICK=1`.
const QUICK_SECS: f64 = 0.5;
/// Events in the replay log: the size the brief's replay target is stated for.
const FULL_REPLAY_EVENTS: u64 = 1_000_000;
/// Events in the replay log with `CAR_BENCH_QUICK=1`.
const QUICK_REPLAY_EVENTS: u64 = 100_000;
/// Events per `SledLog::append` while building the replay log: big batches make building
/// fast (one flush each) and stay far below what one flush can carry.
const BUILD_BATCH: u64 = 10_000;
/// Latency histogram bounds in microseconds: 1 µs to 60 s, 3 significant digits.
const LATENCY_MAX_US: u64 = 60_000_000;

fn main() {
    let quick = std::env::var("CAR_BENCH_QUICK").is_ok_and(|v| v != "0" && !v.is_empty());
    let secs = std::env::var("CAR_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(if quick { QUICK_SECS } else { FULL_SECS });
    let replay_events = if quick {
        QUICK_REPLAY_EVENTS
    } else {
        FULL_REPLAY_EVENTS
    };
    let root = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(root).expect("create CARGO_TARGET_TMPDIR");
    let scratch = tempfile::Builder::new()
        .prefix("car-log-bench-")
        .tempdir_in(root)
        .expect("create the bench directory");

    println!("car-events log benchmark");
    println!(
        "  machine: {} cpus, {}",
        thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    println!("  logs in: {}", scratch.path().display());
    println!("  allocator: mimalloc (as car-replay)");
    println!(
        "  mode: {} ({secs} s per append measurement, {replay_events} replay events)",
        if quick { "quick" } else { "full" }
    );
    println!();

    let only = std::env::var("CAR_BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "append" {
        append_table(scratch.path(), Duration::from_secs_f64(secs));
        println!();
    }
    if only.is_empty() || only == "replay" {
        replay_table(scratch.path(), replay_events);
    }
}

// ---------------------------------------------------------------------------------------
// Events

/// A realistic small event: one turn of about 100 bytes of JSON.
fn event(appender: usize, n: u64) -> Event {
    let turn = format!(
        r#"{{"action":"tool.call","tool":"fs.read","params":{{"path":"/src/{n}.rs"}},"result":"ok","by":{appender}}}"#
    );
    Event::TurnsRecorded(TurnsRecorded {
        run_id: format!("run-{appender}"),
        base_index: n as u32,
        turns: vec![JsonText::parse(turn).expect("valid JSON")],
    })
}

fn envelope(seq: Seq, event: Event) -> Envelope {
    Envelope {
        seq,
        event_id: Uuid::from_u128(u128::from(seq)),
        ts: chrono::DateTime::from_timestamp_millis(1_767_225_600_000 + seq as i64)
            .expect("valid time"),
        schema_version: SCHEMA_VERSION,
        event,
    }
}

// ---------------------------------------------------------------------------------------
// Append throughput and latency

/// One measurement.
struct Cell {
    appends: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    /// Events per `EventLog::append` call, where the storage was behind the writer.
    avg_batch: Option<f64>,
}

impl Cell {
    fn rate(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }

    fn p(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("histogram bounds")
}

fn append_table(root: &Path, duration: Duration) {
    println!(
        "Durable appends of single small events (~{} bytes encoded), {:.1} s each",
        codec::encode(&envelope(1, event(0, 1)))
            .map(|r| r.len())
            .unwrap_or(0),
        duration.as_secs_f64()
    );
    println!(
        "{:>9} | {:<22} | {:>10} | {:>8} | {:>8} | {:>9}",
        "appenders", "system", "appends/s", "p50 ms", "p99 ms", "avg batch"
    );
    println!("{}", "-".repeat(82));
    let mut ratios = Vec::new();
    let levels: Vec<usize> = std::env::var("CAR_BENCH_LEVELS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| LEVELS.to_vec());
    for (i, &n) in levels.iter().enumerate() {
        let ours = {
            let log = SledLog::open(root.join(format!("ours-{n}")), OpenOptions::default())
                .expect("open SledLog");
            run_writer(Counted::new(log), n, duration)
        };
        let sled = run_raw_sled(&root.join(format!("sled-{n}")), n, duration);
        let file = run_writer(
            Counted::new(FileLog::create(&root.join(format!("file-{n}.log")))),
            n,
            duration,
        );
        for (name, cell) in [
            ("ours (Writer+SledLog)", &ours),
            ("(a) raw sled", &sled),
            ("(b) file + fdatasync", &file),
        ] {
            println!(
                "{:>9} | {:<22} | {:>10.0} | {:>8.2} | {:>8.2} | {:>9}",
                n,
                name,
                cell.rate(),
                cell.p(0.5),
                cell.p(0.99),
                cell.avg_batch
                    .map_or_else(|| "-".to_owned(), |b| format!("{b:.1}")),
            );
        }
        if i + 1 < levels.len() {
            println!("{}", "-".repeat(82));
        }
        ratios.push((n, ours.rate() / sled.rate(), ours.rate() / file.rate()));
    }
    println!();
    println!("Ratios (throughput): ours / (a) raw sled, ours / (b) file + fdatasync");
    println!(
        "{:>9} | {:>14} | {:>14}",
        "appenders", "ours / (a)", "ours / (b)"
    );
    for (n, a, b) in &ratios {
        println!("{n:>9} | {a:>13.1}x | {b:>13.2}x");
    }
    if let Some((_, a, b)) = ratios.iter().find(|r| r.0 == 64) {
        println!(
            "targets at 64 appenders: ours >= 20x (a): {} ({a:.1}x); ours within 2x of (b): {} ({b:.2}x)",
            verdict(*a >= 20.0),
            verdict(*b >= 0.5),
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "MISSED" }
}

/// N tokio tasks appending single events through one `Writer<()>` over `log`.
fn run_writer<L: EventLog>(log: Counted<L>, appenders: usize, duration: Duration) -> Cell {
    let log = Arc::new(log);
    let (writer, thread) = Writer::<()>::spawn(log.clone(), (), Stamper::system());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (appends, elapsed, latency_us) = runtime.block_on(async {
        let start = Instant::now();
        let deadline = start + duration;
        let mut tasks = tokio::task::JoinSet::new();
        for a in 0..appenders {
            let writer = writer.clone();
            tasks.spawn(async move {
                let mut hist = histogram();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    writer.append(vec![event(a, n)]).await.expect("append");
                    hist.saturating_record(t.elapsed().as_micros() as u64);
                    n += 1;
                }
                hist
            });
        }
        let mut all = histogram();
        while let Some(hist) = tasks.join_next().await {
            all.add(hist.expect("appender task"))
                .expect("merge histograms");
        }
        let elapsed = start.elapsed();
        writer.shutdown().await;
        (all.len(), elapsed, all)
    });
    thread.join();
    assert_eq!(
        log.events(),
        appends,
        "every acknowledged event was appended"
    );
    assert_eq!(log.head(), appends);
    Cell {
        appends,
        elapsed,
        latency_us,
        avg_batch: Some(log.events() as f64 / log.calls().max(1) as f64),
    }
}

/// N threads each inserting one record and flushing, with sled configured as `SledLog`
/// configures it (no background flusher).
fn run_raw_sled(dir: &Path, appenders: usize, duration: Duration) -> Cell {
    let db = sled::Config::new()
        .path(dir)
        .cache_capacity(OpenOptions::default().cache_bytes)
        .flush_every_ms(None)
        .open()
        .expect("open sled");
    let tree = db.open_tree("events").expect("tree");
    let next = AtomicU64::new(1);
    let start = Instant::now();
    let deadline = start + duration;
    let hists: Vec<Histogram<u64>> = thread::scope(|scope| {
        let workers: Vec<_> = (0..appenders)
            .map(|a| {
                let (db, tree, next) = (&db, &tree, &next);
                thread::Builder::new()
                    .stack_size(256 * 1024)
                    .spawn_scoped(scope, move || {
                        let mut hist = histogram();
                        while Instant::now() < deadline {
                            let t = Instant::now();
                            let seq = next.fetch_add(1, Ordering::Relaxed);
                            let record =
                                codec::encode(&envelope(seq, event(a, seq))).expect("encode");
                            tree.insert(seq.to_be_bytes(), record).expect("insert");
                            db.flush().expect("flush");
                            hist.saturating_record(t.elapsed().as_micros() as u64);
                        }
                        hist
                    })
                    .expect("spawn appender thread")
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("appender thread"))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut all = histogram();
    for h in hists {
        all.add(h).expect("merge histograms");
    }
    Cell {
        appends: all.len(),
        elapsed,
        latency_us: all,
        avg_batch: None,
    }
}

/// Counts what reaches the storage under the writer: `EventLog::append` calls and events,
/// so the average batch the writer achieved is measured from outside the library.
#[derive(Debug)]
struct Counted<L> {
    inner: L,
    calls: AtomicU64,
    events: AtomicU64,
}

impl<L: EventLog> Counted<L> {
    fn new(inner: L) -> Self {
        Self {
            inner,
            calls: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

impl<L: EventLog> EventLog for Counted<L> {
    fn append(&self, batch: &[Envelope]) -> Result<SeqRange, LogError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.inner.append(batch)
    }

    fn raw_from(&self, from: Seq) -> RawIter<'_> {
        self.inner.raw_from(from)
    }

    fn get(&self, seq: Seq) -> Result<Option<Envelope>, LogError> {
        self.inner.get(seq)
    }

    fn head(&self) -> Seq {
        self.inner.head()
    }

    fn watch_head(&self) -> watch::Receiver<Seq> {
        self.inner.watch_head()
    }
}

/// Baseline (b): the writer's batches appended to a plain file, one `write` and one
/// `fdatasync` per batch, records framed by a 4-byte length. Append-only: reads return
/// nothing (the writer needs none on an empty log), so this is a measuring stick, not a
/// log.
#[derive(Debug)]
struct FileLog {
    file: Mutex<File>,
    head: watch::Sender<Seq>,
}

impl FileLog {
    fn create(path: &Path) -> Self {
        let file = File::create(path).expect("create the baseline file");
        Self {
            file: Mutex::new(file),
            head: watch::Sender::new(0),
        }
    }
}

impl EventLog for FileLog {
    fn append(&self, batch: &[Envelope]) -> Result<SeqRange, LogError> {
        let mut file = self.file.lock();
        let head = *self.head.borrow();
        let range = check_sequence(head, batch)?;
        let mut buf = Vec::with_capacity(batch.len() * 160);
        for env in batch {
            let record = codec::encode(env)?;
            buf.extend_from_slice(&(record.len() as u32).to_le_bytes());
            buf.extend_from_slice(&record);
        }
        let io = |e: std::io::Error| LogError::Io(e.to_string());
        file.write_all(&buf).map_err(io)?;
        file.sync_data().map_err(io)?;
        self.head.send_replace(head + range.count);
        Ok(range)
    }

    fn raw_from(&self, _from: Seq) -> RawIter<'_> {
        Box::new(std::iter::empty())
    }

    fn head(&self) -> Seq {
        *self.head.borrow()
    }

    fn watch_head(&self) -> watch::Receiver<Seq> {
        self.head.subscribe()
    }
}

// ---------------------------------------------------------------------------------------
// Replay

fn replay_table(root: &Path, events: u64) {
    let dir = root.join("replay");
    println!("Replay: a log of {events} events (one ~100-byte turn each)");

    let built = Instant::now();
    {
        let log = SledLog::open(&dir, OpenOptions::default()).expect("open SledLog");
        let mut seq = 1;
        while seq <= events {
            let last = (seq + BUILD_BATCH - 1).min(events);
            let batch: Vec<Envelope> = (seq..=last)
                .map(|s| envelope(s, event((s % 64) as usize, s)))
                .collect();
            log.append(&batch).expect("append");
            seq = last + 1;
        }
    }
    let built = built.elapsed();
    let bytes = dir_size(&dir);
    println!(
        "  built with SledLog::append in batches of {BUILD_BATCH}: {:.1} s ({:.0} events/s), {:.0} MiB on disk",
        built.as_secs_f64(),
        events as f64 / built.as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0)
    );

    println!("  {:<52} | {:>9} | {:>12}", "scan", "seconds", "events/s");
    let row = |name: &str, n: u64, t: Duration| {
        println!(
            "  {name:<52} | {:>9.3} | {:>12.0}",
            t.as_secs_f64(),
            n as f64 / t.as_secs_f64()
        );
    };

    // Two rounds of [raw sled, ours], each scan kind from a fresh open, so neither gains
    // from the order: the first scan after the build also pays for sled consolidating the
    // pages the build left as chains of small deltas.
    let mut first_pass = Vec::new();
    let mut second_pass = Vec::new();
    for round in 1..=2 {
        {
            let opened = Instant::now();
            let db = sled::Config::new()
                .path(&dir)
                .cache_capacity(OpenOptions::default().cache_bytes)
                .flush_every_ms(None)
                .open()
                .expect("open sled");
            let tree = db.open_tree("events").expect("tree");
            println!(
                "  {:<52} | {:>9.3} |",
                format!("round {round}: raw sled open"),
                opened.elapsed().as_secs_f64()
            );
            for pass in ["pass 1", "pass 2"] {
                let t = Instant::now();
                let (mut n, mut len) = (0u64, 0u64);
                for item in tree.iter() {
                    let (_, v) = item.expect("sled read");
                    n += 1;
                    len += v.len() as u64;
                }
                let t = t.elapsed();
                assert_eq!(n, events);
                std::hint::black_box(len);
                row(
                    &format!("round {round}: raw sled iter, no decoding, {pass}"),
                    n,
                    t,
                );
            }
        }
        {
            let opened = Instant::now();
            let log = SledLog::open(&dir, OpenOptions::default()).expect("reopen SledLog");
            println!(
                "  {:<52} | {:>9.3} |",
                format!("round {round}: SledLog::open"),
                opened.elapsed().as_secs_f64()
            );
            assert_eq!(log.head(), events);
            for pass in 1..=2 {
                let t = Instant::now();
                let mut n = 0u64;
                for item in log.read_from(1) {
                    let env = item.expect("decode");
                    n += 1;
                    std::hint::black_box(&env);
                }
                let t = t.elapsed();
                assert_eq!(n, events);
                row(
                    &format!("round {round}: SledLog::read_from(1), decoded, pass {pass}"),
                    n,
                    t,
                );
                let rate = n as f64 / t.as_secs_f64();
                if pass == 1 {
                    first_pass.push(rate);
                } else {
                    second_pass.push(rate);
                }
            }
        }
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    println!(
        "  read_from (one thread decodes): best pass 1 {:.0}, best pass 2 {:.0} events/s",
        best(&first_pass),
        best(&second_pass)
    );
    // The replay path (car_events::replay and car-replay): sled read on one thread, records
    // decoded on the others, in order. From a fresh open each round.
    let mut pipelined = Vec::new();
    for round in 1..=2 {
        let log = SledLog::open(&dir, OpenOptions::default()).expect("reopen SledLog");
        for pass in 1..=2 {
            let t = Instant::now();
            let mut n = 0u64;
            scan::scan(
                &log,
                1..=events,
                scan::default_threads(),
                |_| {},
                |item| item.expect("decode"),
                |env| {
                    std::hint::black_box(&env);
                    n += 1;
                    std::ops::ControlFlow::Continue(())
                },
            );
            let t = t.elapsed();
            assert_eq!(n, events);
            row(
                &format!("round {round}: scan::scan (pipelined decode), pass {pass}"),
                n,
                t,
            );
            if pass == 1 {
                pipelined.push(n as f64 / t.as_secs_f64());
            }
        }
    }
    println!(
        "  target >= 1,000,000 decoded events/s from a fresh open (the replay path): {} (best {:.0})",
        verdict(best(&pipelined) >= 1_000_000.0),
        best(&pipelined)
    );
}

fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".to_owned())
}
