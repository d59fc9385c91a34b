//! The daemon benchmark (`car-bench`): one run prints a table of figures, each against its
//! target.
//!
//! Every case runs the real daemon as a separate process on a fresh data directory on the
//! project's disk (under `target/load` by default), talks to it over real WebSockets from
//! this process, and stops it afterwards:
//!
//! - **a** acknowledged turns/s: 1, 16 and 256 clients, each with its own run, calling
//!   `runs.record_turns` in a closed loop (one request in flight per client, as an agent
//!   does) with batches of 1 and of 32 realistic turns (~200 bytes of JSON each), for a
//!   fixed time; only turns whose acknowledgement arrived inside the window count;
//! - **b** `runs.record_turns` sent → `runs.trace.event` received: one writer at a steady
//!   rate, 1, 100 and 1000 subscribers (host sessions) on its run; every event at every
//!   subscriber is measured (one process, one monotonic clock, hdrhistogram);
//! - **c** idle memory per connection: the daemon's `VmRSS` before and after opening 10 000
//!   authenticated connections that then stay idle;
//! - **d** start-up on a 1 M-event log built by `car_projections::synth`: spawn to the
//!   listening line, twice (the first open after a bulk write pays sled's consolidation);
//! - **e** tool round-trips: proposals of one action whose `tools.execute` the submitting
//!   client answers at once, per second with 1 and 64 clients; and the latency one
//!   round-trip adds over a bare WebSocket echo of the same request size, measured in the
//!   same run against an echo server in this process.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use car_events::{OpenOptions, SledLog};
use car_projections::synth::{Workload, write_log};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

use crate::load::server::{
    Scratch, ServerProcess, ServerSpec, cpu_time, default_scratch_parent, proc_status_kib,
};
use crate::load::ws::{self, CALL_TIMEOUT, Conn, client_config, request_text};

/// Set (to a data directory) in the environment of a re-executed `car-bench`: it then
/// builds the synthetic log there and exits (see [`build_log_if_requested`]).
pub const BUILD_LOG_ENV: &str = "CAR_LOAD_BUILD_LOG";
/// With [`BUILD_LOG_ENV`]: how many events of [`Workload::million`]'s shape to write.
pub const BUILD_EVENTS_ENV: &str = "CAR_LOAD_BUILD_EVENTS";

/// Issue 4's throughput target, at 256 clients × 32-turn batches.
const TARGET_TURNS_PER_SEC: f64 = 50_000.0;
/// Issue 4's latency target, p99 at 100 subscribers, in milliseconds.
const TARGET_P99_MS: f64 = 5.0;
/// Issue 4's memory target per idle connection, in KiB.
const TARGET_KIB_PER_CONNECTION: f64 = 20.0;
/// Issue 3's start-up target on a 1 M-event log, in seconds.
const TARGET_STARTUP_SECS: f64 = 3.0;
/// The daemon's turn limit per run (PROTOCOL.md §3.3): a throughput client moves to a new
/// run before reaching it.
const RUN_TURN_LIMIT: usize = 2000;
/// Connections opened at once while setting up many clients: enough to be quick, few
/// enough not to overflow the daemon's accept backlog.
const CONNECT_CONCURRENCY: usize = 64;
/// Retention in days for the start-up case: the synthetic history is stamped at a fixed
/// date, and as that date recedes the default 30 days would turn the first start into a
/// one-off mass eviction. Start-up measures replay and recovery, the same every time.
const STARTUP_RETENTION_DAYS: &str = "36500";
/// Latencies are recorded in microseconds up to this bound (a minute: anything longer is
/// a hang and saturates).
const HIST_MAX_US: u64 = 60_000_000;

/// One of the cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, Serialize)]
pub enum Case {
    /// Acknowledged turns/s.
    A,
    /// Subscriber latency.
    B,
    /// Idle memory per connection.
    C,
    /// Start-up on a 1 M-event log.
    D,
    /// Tool round-trips.
    E,
    /// `memory.add_fact` acknowledged per second.
    F,
}

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// A short smoke run: shorter windows, fewer connections, a 100 k-event log.
    #[arg(long)]
    pub quick: bool,
    /// Only these cases (comma-separated: a,b,c,d,e,f).
    #[arg(long, value_delimiter = ',', value_name = "CASES")]
    pub only: Option<Vec<Case>>,
    /// Seconds per throughput cell of a and e [default: 8, quick: 1.5].
    #[arg(long, value_name = "SECS")]
    pub secs: Option<f64>,
    /// Turns per second the writer of b sends.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub rate: u32,
    /// Subscriber counts of b.
    #[arg(long, value_delimiter = ',', value_name = "N,N…", default_values_t = [1, 100, 1000])]
    pub subscribers: Vec<usize>,
    /// Idle connections of c [default: 10000, quick: 2000].
    #[arg(long, value_name = "N")]
    pub connections: Option<usize>,
    /// Where the daemons' data directories go [default: target/load].
    #[arg(long, value_name = "DIR")]
    pub scratch_dir: Option<PathBuf>,
    /// The daemon binary (default: this executable, which runs `car_gateway::cli::main`
    /// when re-executed by the bench).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
}

impl BenchOptions {
    fn runs(&self, case: Case) -> bool {
        self.only.as_ref().is_none_or(|only| only.contains(&case))
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.secs.unwrap_or(if self.quick { 1.5 } else { 8.0 }))
    }

    fn scratch(&self, name: &str) -> anyhow::Result<Scratch> {
        let parent = self
            .scratch_dir
            .clone()
            .unwrap_or_else(default_scratch_parent);
        Scratch::new(&parent, name)
    }

    fn spec(&self, dir: &Path) -> ServerSpec {
        ServerSpec::new(dir).bin(self.server_bin.clone())
    }
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The case.
    pub case: Case,
    /// What was measured.
    pub what: String,
    /// The figure, for people.
    pub result: String,
    /// The figures, for scripts.
    pub figures: Value,
    /// The target, when this row has one.
    pub target: Option<String>,
    /// Whether the target was met.
    pub met: Option<bool>,
}

impl Row {
    fn new(case: Case, what: impl Into<String>, result: impl Into<String>, figures: Value) -> Self {
        Self {
            case,
            what: what.into(),
            result: result.into(),
            figures,
            target: None,
            met: None,
        }
    }

    fn target(mut self, target: impl Into<String>, met: bool) -> Self {
        self.target = Some(target.into());
        self.met = Some(met);
        self
    }
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Whether it was a `--quick` run.
    pub quick: bool,
    /// CPUs of this machine.
    pub cpus: usize,
    /// The 1-minute load average when the run began.
    pub load_average: Option<f64>,
    /// The rows, in order.
    pub rows: Vec<Row>,
    /// Wall-clock time of the run.
    pub elapsed_secs: f64,
}

impl BenchReport {
    /// Whether every row with a target met it.
    pub fn all_met(&self) -> bool {
        self.rows.iter().all(|row| row.met != Some(false))
    }

    /// The table as Markdown.
    pub fn table(&self) -> String {
        let mut out = String::from("| case | measurement | result | target | met |\n");
        out.push_str("|---|---|---|---|---|\n");
        for row in &self.rows {
            let case = format!("{:?}", row.case).to_lowercase();
            let met = match row.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "–",
            };
            let target = row.target.as_deref().unwrap_or("–");
            out.push_str(&format!(
                "| {case} | {} | {} | {target} | {met} |\n",
                row.what, row.result
            ));
        }
        out
    }
}

/// Runs the cases asked for; `on_row` gets each row as soon as it is measured.
pub async fn run_bench(
    options: &BenchOptions,
    mut on_row: impl FnMut(&Row),
) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    let mut report = BenchReport {
        quick: options.quick,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average: std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse().ok()),
        rows: Vec::new(),
        elapsed_secs: 0.0,
    };
    let mut push = |report: &mut BenchReport, row: Row| {
        on_row(&row);
        report.rows.push(row);
    };
    if options.runs(Case::A) {
        for clients in [1, 16, 256] {
            for batch in [1, 32] {
                let row = throughput(options, clients, batch)
                    .await
                    .with_context(|| format!("a: {clients} clients × {batch}-turn batches"))?;
                push(&mut report, row);
            }
        }
    }
    if options.runs(Case::B) {
        for &subscribers in &options.subscribers {
            let row = subscriber_latency(options, subscribers)
                .await
                .with_context(|| format!("b: {subscribers} subscribers"))?;
            push(&mut report, row);
        }
    }
    if options.runs(Case::C) {
        let row = idle_memory(options).await.context("c: idle memory")?;
        push(&mut report, row);
    }
    if options.runs(Case::D) {
        for row in startup(options).await.context("d: start-up")? {
            push(&mut report, row);
        }
    }
    if options.runs(Case::E) {
        for clients in [1, 64] {
            // Side by side: the markers' cost (§14.5) is the ratio of the two.
            let marked = tool_throughput(options, clients, Markers::Durable)
                .await
                .with_context(|| format!("e: {clients} clients"))?;
            let unmarked = tool_throughput(options, clients, Markers::NotAwaited)
                .await
                .with_context(|| format!("e: {clients} clients, markers not awaited"))?;
            let ratio = marked.figures["per_sec"].as_f64().unwrap_or(0.0)
                / unmarked.figures["per_sec"].as_f64().unwrap_or(f64::NAN);
            let cost = Row::new(
                Case::E,
                format!(
                    "tool round-trips with durable dispatch markers / without, {clients} client(s)"
                ),
                format!("{ratio:.2}x"),
                json!({"clients": clients, "ratio": ratio}),
            )
            .target(">= 0.8x", ratio >= 0.8);
            push(&mut report, marked);
            push(&mut report, unmarked);
            push(&mut report, cost);
        }
        for row in tool_latency(options).await.context("e: latency")? {
            push(&mut report, row);
        }
    }
    if options.runs(Case::F) {
        for clients in [1, 64] {
            let row = add_fact_throughput(options, clients)
                .await
                .with_context(|| format!("f: {clients} clients"))?;
            push(&mut report, row);
        }
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// Shared pieces

/// A realistic turn: ~200 bytes of JSON, as an agent records a tool step.
fn bench_turn(index: usize) -> Value {
    json!({
        "prompt": format!("Find the open invoices of customer {index:06} due this month"),
        "tool": "search",
        "parameters": {"query": "invoices status:open due:this-month", "limit": 10},
        "output": "3 invoices: #18231 (420.00 EUR), #18244 (87.50 EUR), #18302 (1,210.00 EUR)",
    })
}

/// A latency histogram in microseconds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).unwrap_or_else(|e| panic!("histogram: {e}"))
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// A fresh daemon on a fresh scratch directory; both go when dropped.
struct Fresh {
    server: ServerProcess,
    _scratch: Scratch,
}

async fn fresh_server(options: &BenchOptions, name: &str, args: &[&str]) -> anyhow::Result<Fresh> {
    let scratch = options.scratch(name)?;
    let spec = options.spec(scratch.path()).args(args.iter().copied());
    let server = ServerProcess::launch(&spec).await?;
    Ok(Fresh {
        server,
        _scratch: scratch,
    })
}

impl Fresh {
    async fn stop(self) -> anyhow::Result<()> {
        // The figures are taken; a graceful stop would only record every session's end.
        self.server.kill().await?;
        Ok(())
    }
}

/// Opens `n` connections authenticated with `params`, `CONNECT_CONCURRENCY` at a time.
async fn open_many(addr: SocketAddr, n: usize, params: Value) -> anyhow::Result<Vec<Conn>> {
    futures::stream::iter(0..n)
        .map(|_| Conn::authenticated(addr, params.clone()))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// Starts a run for `agent_id`; returns its id.
async fn start_run(conn: &mut Conn, agent_id: &str) -> anyhow::Result<String> {
    let started = conn
        .ok(
            "runs.start",
            json!({"intent": "benchmark", "agent_id": agent_id}),
        )
        .await?;
    started["run_id"]
        .as_str()
        .map(str::to_owned)
        .context("runs.start: no run_id")
}

/// Releases the clients waiting on `go` (the coordinator is its last party). A client
/// that failed while setting up never arrives: that is an error, not a hang.
async fn start_together(go: &Barrier) -> anyhow::Result<()> {
    tokio::time::timeout(CALL_TIMEOUT, go.wait())
        .await
        .map(drop)
        .map_err(|_| anyhow!("a client failed to set up within {CALL_TIMEOUT:?}"))
}

/// Runs one closed-loop driver per connection, all started together at a barrier; sums
/// what they acknowledged inside their window and merges their latencies.
async fn drive<F, Fut>(conns: Vec<Conn>, driver: F) -> anyhow::Result<(u64, Histogram<u64>)>
where
    F: Fn(usize, Conn, Arc<Barrier>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u64, Histogram<u64>)>> + Send + 'static,
{
    let go = Arc::new(Barrier::new(conns.len() + 1));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, conn)| tokio::spawn(driver(i, conn, go.clone())))
        .collect();
    start_together(&go).await?;
    let mut acked = 0u64;
    let mut latency = histogram();
    for task in tasks {
        let (n, hist) = task.await.context("a client task panicked")??;
        acked += n;
        latency.add(&hist).map_err(|e| anyhow!("{e}"))?;
    }
    Ok((acked, latency))
}

/// The small part of a response the drivers look at.
#[derive(Debug, Deserialize)]
struct Ack {
    id: Option<Value>,
    method: Option<String>,
    result: Option<AckResult>,
    error: Option<Value>,
    params: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct AckResult {
    ok: Option<bool>,
    count: Option<u64>,
    base_index: Option<u64>,
    final_state: Option<String>,
}

// ---------------------------------------------------------------------------------------
// a: acknowledged turns per second

async fn throughput(options: &BenchOptions, clients: usize, batch: usize) -> anyhow::Result<Row> {
    let fresh = fresh_server(options, "bench-a", &[]).await?;
    let window = options.window();
    let conns = open_many(
        fresh.server.addr,
        clients,
        json!({"token": fresh.server.auth_token}),
    )
    .await?;
    let (turns, latency) = drive(conns, move |i, conn, go| {
        record_loop(conn, i, batch, window, go)
    })
    .await?;
    fresh.stop().await?;
    let per_sec = turns as f64 / window.as_secs_f64();
    let (p50, p99) = (
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99)),
    );
    let row = Row::new(
        Case::A,
        format!("acked turns/s, {clients} client(s) × {batch}-turn batches"),
        format!("{per_sec:.0}/s (call p50 {p50:.2} ms, p99 {p99:.2} ms)"),
        json!({"clients": clients, "batch": batch, "turns_per_sec": per_sec, "turns": turns,
               "window_secs": window.as_secs_f64(), "call_p50_ms": p50, "call_p99_ms": p99}),
    );
    Ok(if clients == 256 && batch == 32 {
        row.target("≥ 50 000/s", per_sec >= TARGET_TURNS_PER_SEC)
    } else {
        row
    })
}

/// One throughput client: its own run, `runs.record_turns` in a closed loop until the
/// window ends (a new run before the turn limit). Returns the turns acknowledged inside
/// the window and the call latencies.
async fn record_loop(
    mut conn: Conn,
    client: usize,
    batch: usize,
    window: Duration,
    go: Arc<Barrier>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let agent_id = format!("bench-agent-{client}");
    let turns: Vec<Value> = (0..batch).map(bench_turn).collect();
    let frame = |id: u64, run_id: &str| {
        request_text(
            id,
            "runs.record_turns",
            &json!({"run_id": run_id, "turns": turns}),
        )
    };
    let mut run_id = start_run(&mut conn, &agent_id).await?;
    let mut id = conn.fresh_id();
    let mut text = frame(id, &run_id);
    let mut in_run = 0;
    let mut acked = 0u64;
    let mut latency = histogram();
    go.wait().await;
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        if in_run + batch > RUN_TURN_LIMIT {
            conn.ok(
                "runs.complete",
                json!({"run_id": run_id, "outcome": {"status": "success"}}),
            )
            .await?;
            run_id = start_run(&mut conn, &agent_id).await?;
            id = conn.fresh_id();
            text = frame(id, &run_id);
            in_run = 0;
        }
        let sent = Instant::now();
        conn.send_text(text.clone()).await?;
        let reply = conn.response(id).await?;
        let done = Instant::now();
        let result = reply.map_err(|e| anyhow!("runs.record_turns: {e}"))?;
        ensure!(
            result["ok"] == true && result["count"] == batch,
            "runs.record_turns: {result}"
        );
        in_run += batch;
        if done <= deadline {
            acked += batch as u64;
            latency.saturating_record(micros(done - sent));
        }
    }
    Ok((acked, latency))
}

// ---------------------------------------------------------------------------------------
// b: record_turns → runs.trace.event latency

async fn subscriber_latency(options: &BenchOptions, subscribers: usize) -> anyhow::Result<Row> {
    let fresh = fresh_server(options, "bench-b", &[]).await?;
    let addr = fresh.server.addr;
    let window = options.window().max(Duration::from_secs(1));
    let events = (f64::from(options.rate) * window.as_secs_f64()).ceil() as usize;
    let mut writer = Conn::authenticated(addr, json!({"token": fresh.server.auth_token})).await?;
    let run_id = start_run(&mut writer, "bench-writer").await?;
    let mut subs = open_many(
        addr,
        subscribers,
        json!({"host_token": fresh.server.host_token}),
    )
    .await?;
    for sub in &mut subs {
        let snapshot = sub.ok("runs.subscribe", json!({"run_id": run_id})).await?;
        ensure!(snapshot["cursor"] == 0, "runs.subscribe: {snapshot}");
    }
    // Send times, as nanoseconds since `base`, by turn index (0: not sent yet).
    let base = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..events).map(|_| AtomicU64::new(0)).collect());
    let readers: Vec<_> = subs
        .into_iter()
        .map(|sub| {
            let sent_at = sent_at.clone();
            tokio::spawn(async move { follow(sub, base, sent_at).await })
        })
        .collect();

    let (mut sink, mut stream) = writer.split();
    // Responses may come in any order (PROTOCOL.md §1); request `i + 1` carries turn `i`.
    let acks = tokio::spawn(async move {
        for _ in 0..events {
            let text = tokio::time::timeout(CALL_TIMEOUT, ws::next_text(&mut stream))
                .await
                .map_err(|_| anyhow!("an acknowledgement did not come"))??;
            let ack: Ack = serde_json::from_str(&text)?;
            let index = ack.id.as_ref().and_then(Value::as_u64).map(|id| id - 1);
            let ok = ack
                .result
                .as_ref()
                .is_some_and(|r| r.ok == Some(true) && r.base_index == index && r.count == Some(1));
            ensure!(ok, "runs.record_turns: {text}");
        }
        Ok::<_, anyhow::Error>(())
    });
    let cpu_before = (cpu_time(fresh.server.pid())?, cpu_time(std::process::id())?);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.rate)));
    for (index, slot) in sent_at.iter().enumerate() {
        ticks.tick().await;
        let params = json!({"run_id": run_id, "turns": [bench_turn(index)]});
        let text = request_text(index as u64 + 1, "runs.record_turns", &params);
        slot.store(nanos_since(base), Ordering::Release);
        sink.send(Message::text(text)).await?;
    }
    acks.await.context("the ack reader panicked")??;
    let mut latency = histogram();
    let mut received = 0u64;
    for reader in readers {
        let hist = tokio::time::timeout(CALL_TIMEOUT, reader)
            .await
            .map_err(|_| anyhow!("a subscriber did not receive every event"))?
            .context("a subscriber panicked")??;
        received += hist.len();
        latency.add(&hist).map_err(|e| anyhow!("{e}"))?;
    }
    let daemon_cpu = cpu_time(fresh.server.pid())?.saturating_sub(cpu_before.0);
    let bench_cpu = cpu_time(std::process::id())?.saturating_sub(cpu_before.1);
    fresh.stop().await?;
    let expected = (events * subscribers) as u64;
    // CPU per event delivered: what one more subscriber costs each side.
    let per_event = |cpu: Duration| cpu.as_secs_f64() * 1e6 / received.max(1) as f64;
    let (daemon_us, bench_us) = (per_event(daemon_cpu), per_event(bench_cpu));
    ensure!(
        received == expected,
        "{received} events received, {expected} expected"
    );
    let (p50, p99, max) = (
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.max()),
    );
    let row = Row::new(
        Case::B,
        format!(
            "record_turns → trace.event, {subscribers} subscriber(s), {} turns/s",
            options.rate
        ),
        format!(
            "p50 {p50:.2} ms, p99 {p99:.2} ms (max {max:.1} ms; {received} events; CPU per \
             event: daemon {daemon_us:.0} µs, bench {bench_us:.0} µs)"
        ),
        json!({"subscribers": subscribers, "rate": options.rate, "events": received,
               "p50_ms": p50, "p99_ms": p99, "max_ms": max,
               "daemon_cpu_us_per_event": daemon_us, "bench_cpu_us_per_event": bench_us}),
    );
    Ok(if subscribers == 100 {
        row.target("p99 < 5 ms", p99 < TARGET_P99_MS)
    } else {
        row
    })
}

fn nanos_since(base: Instant) -> u64 {
    u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// One subscriber: reads `runs.trace.event`s until the last turn's, recording each one's
/// latency from its send.
async fn follow(
    sub: Conn,
    base: Instant,
    sent_at: Arc<Vec<AtomicU64>>,
) -> anyhow::Result<Histogram<u64>> {
    #[derive(Deserialize)]
    struct Note {
        params: Option<NoteParams>,
    }
    #[derive(Deserialize)]
    struct NoteParams {
        record: NoteRecord,
    }
    #[derive(Deserialize)]
    struct NoteRecord {
        index: Option<u64>,
    }
    let (_sink, mut stream) = sub.split();
    let mut latency = histogram();
    let mut next = 0u64;
    while (next as usize) < sent_at.len() {
        let text = ws::next_text(&mut stream).await?;
        let received = nanos_since(base);
        let note: Note = serde_json::from_str(&text)?;
        let Some(index) = note.params.and_then(|p| p.record.index) else {
            continue;
        };
        ensure!(index == next, "turn {index} arrived, {next} expected");
        let sent = sent_at[index as usize].load(Ordering::Acquire);
        latency.saturating_record((received.saturating_sub(sent) / 1000).max(1));
        next += 1;
    }
    Ok(latency)
}

// ---------------------------------------------------------------------------------------
// c: idle memory per connection

async fn idle_memory(options: &BenchOptions) -> anyhow::Result<Row> {
    let n = options
        .connections
        .unwrap_or(if options.quick { 2000 } else { 10_000 });
    let max = (n + 1024).max(16_384).to_string();
    let fresh = fresh_server(options, "bench-c", &["--max-connections", &max]).await?;
    let before = fresh.server.rss_kib()?;
    let conns = open_many(
        fresh.server.addr,
        n,
        json!({"token": fresh.server.auth_token}),
    )
    .await?;
    let after = fresh.server.rss_kib()?;
    let peak = proc_status_kib(fresh.server.pid(), "VmHWM")?;
    fresh.stop().await?;
    drop(conns);
    let per = after.saturating_sub(before) as f64 / n as f64;
    let row = Row::new(
        Case::C,
        format!("daemon RSS per idle authenticated connection, {n} connections"),
        format!("{per:.1} KiB (VmRSS {before} → {after} KiB)"),
        json!({"connections": n, "rss_before_kib": before, "rss_after_kib": after,
               "hwm_kib": peak, "kib_per_connection": per}),
    );
    Ok(row.target("< 20 KiB", per < TARGET_KIB_PER_CONNECTION))
}

// ---------------------------------------------------------------------------------------
// d: start-up on a 1 M-event log

/// Builds the synthetic log when this process was re-executed for it ([`BUILD_LOG_ENV`]):
/// in a process of its own, so sled's lock on the directory is surely released (sled lets
/// go only when its last background thread does) before the daemon opens it.
pub fn build_log_if_requested() -> Option<ExitCode> {
    let dir = std::env::var_os(BUILD_LOG_ENV)?;
    let events = std::env::var(BUILD_EVENTS_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(Workload::million().events);
    let workload = Workload {
        events,
        ..Workload::million()
    };
    let built = SledLog::open(Path::new(&dir).join("log"), OpenOptions::default())
        .map_err(anyhow::Error::from)
        .and_then(|log| Ok(write_log(&log, &workload, 1, |_| {})?));
    match built {
        Ok(state) => {
            println!("{}", state.head());
            Some(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!("building the log: {err:#}");
            Some(ExitCode::from(crate::load::EXIT_SETUP))
        }
    }
}

async fn startup(options: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    let scratch = options.scratch("bench-d")?;
    let events = if options.quick {
        100_000
    } else {
        Workload::million().events
    };
    let build_started = Instant::now();
    let exe = std::env::current_exe().context("locating this executable")?;
    let built = tokio::process::Command::new(exe)
        .env(BUILD_LOG_ENV, scratch.path())
        .env(BUILD_EVENTS_ENV, events.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .context("running the log builder")?;
    if !built.status.success() {
        bail!("the log builder failed: {}", built.status);
    }
    let head: u64 = String::from_utf8_lossy(&built.stdout)
        .trim()
        .parse()
        .context("the log builder's head")?;
    let build_secs = build_started.elapsed().as_secs_f64();
    let size = dir_bytes(&scratch.path().join("log"));
    let spec = options
        .spec(scratch.path())
        .args(["--run-retention", STARTUP_RETENTION_DAYS]);
    let mut rows = Vec::new();
    for (nth, label) in [(1, "first start after the bulk write"), (2, "second start")] {
        let server = ServerProcess::launch(&spec).await?;
        let startup = server.startup;
        server.terminate().await?;
        let secs = startup.to_listening.as_secs_f64();
        let ready = startup.ready_in.unwrap_or(f64::NAN);
        let replayed = startup.events_replayed.unwrap_or(0);
        rows.push(
            Row::new(
                Case::D,
                format!("start-up, {head}-event log ({} MiB), {label}", size >> 20),
                format!("{secs:.2} s to listening (daemon: ready in {ready:.2} s)"),
                json!({"start": nth, "events": head, "log_bytes": size, "replayed": replayed,
                       "to_listening_secs": secs, "ready_in_secs": ready,
                       "build_secs": build_secs}),
            )
            .target("< 3 s", secs < TARGET_STARTUP_SECS),
        );
    }
    Ok(rows)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// e: tool round-trips

/// A `proposal.submit` of one `echo` action, with parameters of a realistic size.
fn proposal_text(id: u64) -> String {
    let params = json!({"proposal": {"actions": [{
        "id": "a1",
        "tool": "echo",
        "parameters": {"text": "summarise the three open invoices and draft a reminder"},
    }]}});
    request_text(id, "proposal.submit", &params)
}

/// A session that offers the `echo` tool.
async fn tool_client(addr: SocketAddr, token: &str) -> anyhow::Result<Conn> {
    let mut conn = Conn::authenticated(addr, json!({"token": token})).await?;
    conn.ok("tools.register", json!({"tools": [{"name": "echo"}]}))
        .await?;
    Ok(conn)
}

/// One proposal round-trip: submit, answer its `tools.execute` at once, wait for the
/// result.
async fn proposal_round_trip(conn: &mut Conn) -> anyhow::Result<()> {
    let id = conn.fresh_id();
    conn.send_text(proposal_text(id)).await?;
    let wait = async {
        loop {
            let text = conn.next_text().await?;
            let frame: Ack = serde_json::from_str(&text)?;
            if frame.method.as_deref() == Some("tools.execute") {
                let request_id = frame.id.context("tools.execute without an id")?;
                let output = frame
                    .params
                    .as_ref()
                    .map_or(Value::Null, |p| p["parameters"].clone());
                let reply = json!({"jsonrpc": "2.0", "id": request_id, "result": output});
                conn.send_text(reply.to_string()).await?;
            } else if frame.id == Some(json!(id)) {
                let completed = frame.result.as_ref().and_then(|r| r.final_state.as_deref())
                    == Some("completed");
                ensure!(
                    completed && frame.error.is_none(),
                    "proposal.submit: {text}"
                );
                return Ok(());
            }
        }
    };
    tokio::time::timeout(CALL_TIMEOUT, wait)
        .await
        .map_err(|_| anyhow!("no proposal result within {CALL_TIMEOUT:?}"))?
}

/// Whether `tools.execute` waits for its dispatch marker to be durable (the daemon's
/// behaviour) or is sent once the marker is queued (`--bench-unmarked-dispatch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Markers {
    Durable,
    NotAwaited,
}

async fn tool_throughput(
    options: &BenchOptions,
    clients: usize,
    markers: Markers,
) -> anyhow::Result<Row> {
    let args: &[&str] = match markers {
        Markers::Durable => &[],
        Markers::NotAwaited => &["--bench-unmarked-dispatch"],
    };
    let fresh = fresh_server(options, "bench-e", args).await?;
    let window = options.window();
    let (addr, token) = (fresh.server.addr, fresh.server.auth_token.clone());
    let conns: Vec<Conn> = futures::stream::iter(0..clients)
        .map(|_| tool_client(addr, &token))
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let go = Arc::new(Barrier::new(clients + 1));
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let go = go.clone();
            tokio::spawn(async move {
                go.wait().await;
                let deadline = Instant::now() + window;
                let mut done = 0u64;
                while Instant::now() < deadline {
                    proposal_round_trip(&mut conn).await?;
                    if Instant::now() <= deadline {
                        done += 1;
                    }
                }
                Ok::<_, anyhow::Error>(done)
            })
        })
        .collect();
    start_together(&go).await?;
    let mut total = 0;
    for task in tasks {
        total += task.await.context("a tool client panicked")??;
    }
    fresh.stop().await?;
    let per_sec = total as f64 / window.as_secs_f64();
    Ok(Row::new(
        Case::E,
        format!(
            "tool round-trips/s (1-action proposals), {clients} client(s){}",
            match markers {
                Markers::Durable => "",
                Markers::NotAwaited => ", dispatch markers not awaited",
            }
        ),
        format!("{per_sec:.0}/s"),
        json!({"clients": clients, "round_trips": total, "per_sec": per_sec,
               "window_secs": window.as_secs_f64(),
               "durable_markers": markers == Markers::Durable}),
    ))
}

/// A WebSocket echo server in this process: the baseline of a round-trip.
async fn echo_server() -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let accepted =
                    tokio_tungstenite::accept_async_with_config(stream, Some(client_config()))
                        .await;
                let Ok(mut ws) = accepted else { return };
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_close() || (message.is_text() && ws.send(message).await.is_err())
                    {
                        break;
                    }
                }
            });
        }
    });
    Ok((addr, task))
}

async fn tool_latency(options: &BenchOptions) -> anyhow::Result<Vec<Row>> {
    let rounds = if options.quick { 300 } else { 3000 };
    let warm_up = rounds / 10;
    // The echo baseline: the same request text, echoed.
    let (echo_addr, echo_task) = echo_server().await?;
    let mut echo = Conn::connect(echo_addr).await?;
    let mut echo_hist = histogram();
    let text = proposal_text(1);
    for round in 0..warm_up + rounds {
        let sent = Instant::now();
        echo.send_text(text.clone()).await?;
        let back = echo.next_text().await?;
        ensure!(back.len() == text.len(), "the echo differs");
        if round >= warm_up {
            echo_hist.saturating_record(micros(sent.elapsed()));
        }
    }
    echo.close().await;
    echo_task.abort();

    let fresh = fresh_server(options, "bench-e", &[]).await?;
    let mut conn = tool_client(fresh.server.addr, &fresh.server.auth_token).await?;
    let mut tool_hist = histogram();
    for round in 0..warm_up + rounds {
        let sent = Instant::now();
        proposal_round_trip(&mut conn).await?;
        if round >= warm_up {
            tool_hist.saturating_record(micros(sent.elapsed()));
        }
    }
    fresh.stop().await?;
    let q = |h: &Histogram<u64>, q: f64| ms(h.value_at_quantile(q));
    let (e50, e99, t50, t99) = (
        q(&echo_hist, 0.5),
        q(&echo_hist, 0.99),
        q(&tool_hist, 0.5),
        q(&tool_hist, 0.99),
    );
    Ok(vec![
        Row::new(
            Case::E,
            format!(
                "bare WebSocket echo round-trip ({} bytes), 1 client",
                text.len()
            ),
            format!("p50 {e50:.3} ms, p99 {e99:.3} ms"),
            json!({"rounds": rounds, "p50_ms": e50, "p99_ms": e99}),
        ),
        Row::new(
            Case::E,
            "1-action proposal round-trip (submit → tools.execute → reply → result), 1 client",
            format!("p50 {t50:.3} ms, p99 {t99:.3} ms"),
            json!({"rounds": rounds, "p50_ms": t50, "p99_ms": t99}),
        ),
        Row::new(
            Case::E,
            "latency the daemon adds per tool round-trip (proposal − echo)",
            format!("p50 +{:.3} ms, p99 +{:.3} ms", t50 - e50, t99 - e99),
            json!({"p50_ms": t50 - e50, "p99_ms": t99 - e99}),
        ),
    ])
}

// ---------------------------------------------------------------------------------------
// f: memory.add_fact acknowledged per second

/// `memory.add_fact` acknowledged per second by `clients` clients in closed loops, each
/// on a namespace of its own (so no scope is shared, as agents' memories are not), next
/// to one-turn `runs.record_turns` calls from as many clients on the same daemon build
/// measured right before: the same write path (one durable event per call), so the
/// ratio shows what memory's decision and index cost on top of it.
async fn add_fact_throughput(options: &BenchOptions, clients: usize) -> anyhow::Result<Row> {
    let baseline = throughput(options, clients, 1).await?;
    let turns_per_sec = baseline.figures["turns_per_sec"].as_f64().unwrap_or(0.0);
    let fresh = fresh_server(options, "bench-f", &[]).await?;
    let window = options.window();
    let mut conns = Vec::with_capacity(clients);
    for i in 0..clients {
        let params =
            json!({"token": fresh.server.auth_token, "memory_namespace": format!("bench-{i}")});
        conns.push(Conn::authenticated(fresh.server.addr, params).await?);
    }
    let (facts, latency) =
        drive(conns, move |i, conn, go| add_fact_loop(conn, i, window, go)).await?;
    fresh.stop().await?;
    let per_sec = facts as f64 / window.as_secs_f64();
    let (p50, p99) = (
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99)),
    );
    let ratio = if turns_per_sec > 0.0 {
        per_sec / turns_per_sec
    } else {
        0.0
    };
    Ok(Row::new(
        Case::F,
        format!("acked memory.add_fact/s, {clients} client(s)"),
        format!(
            "{per_sec:.0}/s (call p50 {p50:.2} ms, p99 {p99:.2} ms); one-turn record_turns {turns_per_sec:.0}/s: {ratio:.2}x"
        ),
        json!({"clients": clients, "facts_per_sec": per_sec, "facts": facts,
               "window_secs": window.as_secs_f64(), "call_p50_ms": p50, "call_p99_ms": p99,
               "baseline_turns_per_sec": turns_per_sec, "ratio": ratio}),
    ))
}

/// One `memory.add_fact` client: realistic facts (~200 bytes) with fresh ids, in a closed
/// loop until the window ends. Returns the facts acknowledged inside the window and the
/// call latencies.
async fn add_fact_loop(
    mut conn: Conn,
    client: usize,
    window: Duration,
    go: Arc<Barrier>,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut acked = 0u64;
    let mut latency = histogram();
    let mut n = 0u64;
    go.wait().await;
    let deadline = Instant::now() + window;
    while Instant::now() < deadline {
        n += 1;
        let params = json!({
            "fact_id": format!("f-{client}-{n}"),
            "subject": format!("service {} deploys", n % 97),
            "body": format!("Deploys of service {} go through the staging cluster first and need the on-call engineer's approval; fact {n} of client {client}.", n % 97),
            "kind": "environment",
            "tags": ["deploy", "bench"],
        });
        let id = conn.fresh_id();
        let sent = Instant::now();
        conn.send_text(request_text(id, "memory.add_fact", &params))
            .await?;
        let reply = conn.response(id).await?;
        let done = Instant::now();
        let count = reply.map_err(|e| anyhow!("memory.add_fact: {e}"))?;
        ensure!(count.as_u64() == Some(n), "memory.add_fact: {count}");
        if done <= deadline {
            acked += 1;
            latency.saturating_record(micros(done - sent));
        }
    }
    Ok((acked, latency))
}
