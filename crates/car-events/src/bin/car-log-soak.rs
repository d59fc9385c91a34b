//! `car-log-soak`: kills a process that is appending to a [`SledLog`] at random moments,
//! over and over, and checks after every kill that the log kept every acknowledged event.
//!
//! The log's one promise is that an append the [`Writer`] acknowledged survives any crash.
//! Unit tests can only simulate a crash (drop a handle, damage a record); this drives the
//! real thing: a `child` process appends through the single group-commit writer from many
//! concurrent tasks and prints one line per acknowledged append; the `soak` parent reads
//! those lines, sends the child SIGKILL after a seeded random delay, reopens the log itself
//! and checks it against what it was told:
//!
//! - the log opens; a tail repair is allowed only for a seq nobody was told about;
//! - every acknowledged seq is present, decodes, and holds exactly the event the ack named;
//! - seqs `1..=head` are gapless, every record decodes and times never go backwards;
//! - the head is at least the highest acknowledged seq, and the next child sees that head.
//!
//! Every cycle appends to the same log, so it grows across cycles and later kills land in
//! a log with history (and in sled's segment rewrites and snapshots).
//!
//! Exit codes of `soak`: 0 every check passed, 1 a violation (printed with its seq), 2 a
//! usage or setup error. `child` never exits by itself unless something fails: 2 when the
//! log does not open, 1 when an append or writing an ack fails.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command as Process, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use car_events::event::TurnsRecorded;
use car_events::{Envelope, Event, EventLog, JsonText, OpenOptions, Seq, SledLog, Stamper, Writer};
use clap::{Args, Parser, Subcommand};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Exit code for a violated invariant.
const EXIT_VIOLATION: u8 = 1;
/// Exit code for a usage or setup error (clap uses 2 for usage errors too).
const EXIT_SETUP: u8 = 2;
/// How long a child may take to open the log before the cycle counts as a failure. sled's
/// recovery of a log of a few million events takes seconds; a minute means it hangs.
const OPEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Violations printed before the checker stops looking: the first few name the problem,
/// thousands more would only bury it.
const MAX_VIOLATIONS: usize = 20;
/// Padding in every event's turn JSON, so records are the size of a small real turn
/// (~100 bytes of JSON) rather than a few bytes.
const PAD: &str = "soak-payload-soak-payload-soak-payload-soak-payload";

#[derive(Debug, Parser)]
#[command(
    name = "car-log-soak",
    version,
    about = "Crash soak for the car event log: SIGKILL an appender at random moments and \
             check that every acknowledged event survived",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Append to the log until killed, printing `ack <first_seq> <count> <appender>
    /// <counter>` after every acknowledged append (used by `soak`).
    Child(ChildArgs),
    /// Run kill/reopen/check cycles against one log.
    Soak(SoakArgs),
}

#[derive(Debug, Args)]
struct ChildArgs {
    /// The log directory (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Concurrent appender tasks, all through the single writer.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    appenders: u32,
    /// Events per append.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// The soak cycle, written into every event so each event is unique across cycles.
    #[arg(long, default_value_t = 0)]
    cycle: u32,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// How many kill/reopen/check cycles.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    cycles: u32,
    /// Concurrent appenders in each child.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    appenders: u32,
    /// Events per append.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    batch: u32,
    /// The log directory; it is kept. Default: a fresh directory under the system temp
    /// directory, removed after a clean run and kept after a violation.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed of the kill schedule (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// The longest delay before a kill, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    max_delay_ms: u64,
    /// Print the summary as one JSON object on stdout (cycle lines go to stderr).
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Child(args) => match child(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(ChildError::Open(e)) => {
                eprintln!("car-log-soak child: {e:#}");
                ExitCode::from(EXIT_SETUP)
            }
            Err(ChildError::Run(e)) => {
                eprintln!("car-log-soak child: {e:#}");
                ExitCode::from(EXIT_VIOLATION)
            }
        },
        Command::Soak(args) => match soak(&args) {
            Ok(summary) if summary.violations.is_empty() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(EXIT_VIOLATION),
            Err(e) => {
                eprintln!("car-log-soak: {e:#}");
                ExitCode::from(EXIT_SETUP)
            }
        },
    }
}

// ---------------------------------------------------------------------------------------
// The events: what appender `a` appends as its `n`th event in cycle `c`.

/// Who appended an event, as an ack line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    cycle: u32,
    appender: u32,
    counter: u32,
}

/// The event an appender appends: its content identifies the origin, so the checker can
/// tell a record that is merely present from one that holds what was acknowledged.
fn soak_event(origin: Origin) -> Event {
    let Origin {
        cycle,
        appender,
        counter,
    } = origin;
    let turn =
        format!(r#"{{"cycle":{cycle},"appender":{appender},"counter":{counter},"pad":"{PAD}"}}"#);
    Event::TurnsRecorded(TurnsRecorded {
        run_id: format!("c{cycle}.a{appender}"),
        base_index: counter,
        turns: vec![JsonText::parse(turn).unwrap_or_else(|_| JsonText::null())],
    })
}

// ---------------------------------------------------------------------------------------
// child

#[derive(Debug)]
enum ChildError {
    Open(anyhow::Error),
    Run(anyhow::Error),
}

/// Writes one line to stdout and flushes it, so the parent sees each ack as soon as it is
/// given: a line the parent has read is a promise the child made.
fn say(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}

fn child(args: &ChildArgs) -> Result<(), ChildError> {
    let log = SledLog::open(&args.dir, OpenOptions::default())
        .with_context(|| format!("opening the log in {}", args.dir.display()))
        .map_err(ChildError::Open)?;
    let head = log.head();
    let (writer, _thread) = Writer::<()>::spawn(Arc::new(log), (), Stamper::system());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .map_err(ChildError::Open)?;
    say(&format!("open {head}\n"))
        .context("writing to stdout")
        .map_err(ChildError::Run)?;
    let (appenders, batch, cycle) = (args.appenders, args.batch, args.cycle);
    runtime
        .block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for appender in 0..appenders {
                let writer = writer.clone();
                tasks.spawn(async move {
                    let mut counter: u32 = 0;
                    loop {
                        let events = (0..batch)
                            .map(|i| {
                                soak_event(Origin {
                                    cycle,
                                    appender,
                                    counter: counter + i,
                                })
                            })
                            .collect();
                        let range = writer
                            .append(events)
                            .await
                            .with_context(|| format!("appender {appender}: append failed"))?;
                        say(&format!(
                            "ack {} {} {appender} {counter}\n",
                            range.first, range.count
                        ))
                        .context("writing an ack to stdout")?;
                        counter = counter
                            .checked_add(batch)
                            .context("appender counter overflow")?;
                    }
                });
            }
            // The appenders only end by failing; the first failure ends the child.
            match tasks.join_next().await {
                Some(Ok(result)) => result,
                Some(Err(join)) => Err(anyhow::anyhow!("appender task died: {join}")),
                None => Ok(()),
            }
        })
        .map_err(ChildError::Run)
}

// ---------------------------------------------------------------------------------------
// soak

/// When, relative to the child's life, a cycle's kill lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    /// Counted from the spawn: short delays kill the child while it starts up or while
    /// sled recovers the log.
    Spawn,
    /// Counted from the child's `open` line: a delay of 0 kills it right after the open,
    /// before or during its first appends.
    Open,
}

impl Anchor {
    fn as_str(self) -> &'static str {
        match self {
            Anchor::Spawn => "spawn",
            Anchor::Open => "open",
        }
    }
}

/// One cycle's kill moment.
#[derive(Debug, Clone, Copy)]
struct KillPlan {
    anchor: Anchor,
    delay: Duration,
}

impl KillPlan {
    /// Half the kills count from the spawn, half from the open; a quarter of the delays
    /// are at most 5 ms (kills during start-up or right after the open), a quarter at
    /// most a tenth of the maximum, and half anywhere up to the maximum.
    fn draw(rng: &mut StdRng, max_delay_ms: u64) -> Self {
        let anchor = if rng.random_bool(0.5) {
            Anchor::Spawn
        } else {
            Anchor::Open
        };
        let ms = match rng.random_range(0..4u8) {
            0 => rng.random_range(0..=max_delay_ms.min(5)),
            1 => rng.random_range(0..=max_delay_ms / 10),
            _ => rng.random_range(0..=max_delay_ms),
        };
        Self {
            anchor,
            delay: Duration::from_millis(ms),
        }
    }
}

/// What a child told the parent before it died.
#[derive(Debug, Default)]
struct ChildReport {
    /// The head the child saw when it opened the log.
    open_head: Option<Seq>,
    /// Acknowledged appends: (first seq, count, appender, first counter).
    acks: Vec<(Seq, u64, u32, u32)>,
    /// Lines that are neither (a bug in the child or a torn line).
    malformed: Vec<String>,
}

impl ChildReport {
    fn take(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["open", head] => match head.parse() {
                Ok(head) => self.open_head = Some(head),
                Err(_) => self.malformed.push(line.to_owned()),
            },
            ["ack", first, count, appender, counter] => {
                match (
                    first.parse(),
                    count.parse(),
                    appender.parse(),
                    counter.parse(),
                ) {
                    (Ok(f), Ok(n), Ok(a), Ok(c)) => self.acks.push((f, n, a, c)),
                    _ => self.malformed.push(line.to_owned()),
                }
            }
            _ => self.malformed.push(line.to_owned()),
        }
    }
}

/// A line from the child's stdout. Only complete lines count: a line cut by the kill is a
/// promise not (fully) made.
enum Line {
    Complete(String),
    Torn,
}

fn read_lines(stdout: ChildStdout, tx: mpsc::Sender<Line>) {
    let mut reader = BufReader::new(stdout);
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line = match line.strip_suffix('\n') {
                    Some(complete) => Line::Complete(complete.to_owned()),
                    None => Line::Torn,
                };
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

/// The soak's running record.
#[derive(Debug, Default)]
struct Summary {
    cycles: u32,
    acked_appends: u64,
    acked_events: u64,
    cycles_with_acks: u32,
    log_events: Seq,
    tail_repairs: Vec<String>,
    torn_lines: u64,
    violations: Vec<String>,
    per_cycle: Vec<serde_json::Value>,
}

/// Everything the parent was told, across cycles: seq → who appended it.
#[derive(Debug, Default)]
struct Acked {
    by_seq: HashMap<Seq, Origin>,
    max_seq: Seq,
}

fn soak(args: &SoakArgs) -> anyhow::Result<Summary> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let (dir, owned_dir) = match &args.dir {
        Some(dir) => (dir.clone(), false),
        None => (fresh_dir()?, true),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let seed = args.seed.unwrap_or_else(clock_seed);
    let mut rng = StdRng::seed_from_u64(seed);
    let progress = |line: String| {
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    progress(format!(
        "soak: {} cycles, {} appenders, batch {}, seed {seed}, max delay {} ms, log {}",
        args.cycles,
        args.appenders,
        args.batch,
        args.max_delay_ms,
        dir.display()
    ));

    // The log as it is before the first child: it may already hold events (a `--dir` of
    // an earlier run); it must pass the same checks.
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut acked = Acked::default();
    let mut head = match reopen_and_check(&dir, &acked, &mut summary) {
        Some(head) if summary.violations.is_empty() => head,
        _ => return finish(args, seed, &dir, started, summary, owned_dir),
    };

    for cycle in 1..=args.cycles {
        let plan = KillPlan::draw(&mut rng, args.max_delay_ms);
        let before = head;
        let mut child = Process::new(&exe)
            .args(["child", "--dir"])
            .arg(&dir)
            .args([
                "--appenders",
                &args.appenders.to_string(),
                "--batch",
                &args.batch.to_string(),
                "--cycle",
                &cycle.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let spawned = Instant::now();
        let (report, torn, early_exit) = run_child(&mut child, plan, spawned)?;
        summary.cycles = cycle;
        summary.torn_lines += torn;

        if let Some(why) = early_exit {
            summary
                .violations
                .push(format!("cycle {cycle}: the child {why}"));
        }
        for line in &report.malformed {
            summary.violations.push(format!(
                "cycle {cycle}: malformed line from the child: {line:?}"
            ));
        }
        if let Some(open_head) = report.open_head {
            if open_head != before {
                summary.violations.push(format!(
                    "cycle {cycle}: the child opened the log at head {open_head}, \
                     the check before it saw head {before}"
                ));
            }
        }
        let mut cycle_events = 0;
        for &(first, count, appender, counter) in &report.acks {
            if count != u64::from(args.batch) {
                summary.violations.push(format!(
                    "cycle {cycle}: ack of {count} events at seq {first}, \
                     appends are of {}",
                    args.batch
                ));
            }
            for i in 0..count {
                let seq = first + i;
                let origin = Origin {
                    cycle,
                    appender,
                    counter: counter.wrapping_add(i as u32),
                };
                if let Some(earlier) = acked.by_seq.insert(seq, origin) {
                    summary.violations.push(format!(
                        "seq {seq}: acknowledged twice ({earlier:?} and {origin:?})"
                    ));
                }
                acked.max_seq = acked.max_seq.max(seq);
            }
            cycle_events += count;
        }
        summary.acked_appends += report.acks.len() as u64;
        summary.acked_events += cycle_events;
        if cycle_events > 0 {
            summary.cycles_with_acks += 1;
        }

        let checked = Instant::now();
        let repairs_before = summary.tail_repairs.len();
        let after = reopen_and_check(&dir, &acked, &mut summary);
        let repair = summary.tail_repairs[repairs_before..]
            .first()
            .cloned()
            .unwrap_or_else(|| "none".into());
        let check_ms = checked.elapsed().as_millis();
        let new_head = after.unwrap_or(head);
        progress(format!(
            "cycle {cycle}/{}: kill {} ms after {}, {} acks ({cycle_events} events), \
             head {before} -> {new_head}, repair: {repair}, check {check_ms} ms",
            args.cycles,
            plan.delay.as_millis(),
            plan.anchor.as_str(),
            report.acks.len(),
        ));
        summary.per_cycle.push(serde_json::json!({
            "cycle": cycle,
            "anchor": plan.anchor.as_str(),
            "kill_after_ms": plan.delay.as_millis() as u64,
            "acked_appends": report.acks.len(),
            "acked_events": cycle_events,
            "head_before": before,
            "head_after": new_head,
            "tail_repair": summary.tail_repairs.get(repairs_before),
        }));
        match after {
            Some(h) if summary.violations.is_empty() => head = h,
            _ => break,
        }
    }
    finish(args, seed, &dir, started, summary, owned_dir)
}

/// Waits for the kill moment while collecting the child's lines, kills it (SIGKILL), and
/// collects what it printed before it died. Returns the report, the number of torn lines
/// and, when the child ended by itself, why.
fn run_child(
    child: &mut Child,
    plan: KillPlan,
    spawned: Instant,
) -> anyhow::Result<(ChildReport, u64, Option<String>)> {
    let stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || read_lines(stdout, tx));
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let mut report = ChildReport::default();
    let mut torn = 0;
    let mut deadline = match plan.anchor {
        Anchor::Spawn => Some(spawned + plan.delay),
        Anchor::Open => None,
    };
    let ended_early = loop {
        let wait = match deadline {
            Some(at) => at.saturating_duration_since(Instant::now()),
            None => (spawned + OPEN_TIMEOUT).saturating_duration_since(Instant::now()),
        };
        match next_line(&rx, wait) {
            Next::Line(Line::Complete(line)) => {
                report.take(&line);
                if deadline.is_none() && report.open_head.is_some() {
                    deadline = Some(Instant::now() + plan.delay);
                }
            }
            Next::Line(Line::Torn) => torn += 1,
            Next::TimedOut if deadline.is_some() => break false,
            Next::TimedOut => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the child did not open the log within {} s",
                    OPEN_TIMEOUT.as_secs()
                );
            }
            Next::Closed => break true,
        }
    };
    // SIGKILL: no destructor, no flush, no goodbye. (Fails only if it already exited.)
    let _ = child.kill();
    let status = child.wait().context("waiting for the child")?;
    for line in rx.iter() {
        match line {
            Line::Complete(line) => report.take(&line),
            Line::Torn => torn += 1,
        }
    }
    let _ = reader.join();
    let stderr = errors.join().unwrap_or_default();
    let early = ended_early.then(|| {
        format!(
            "exited by itself ({status}) before the kill: {}",
            stderr.trim()
        )
    });
    Ok((report, torn, early))
}

enum Next {
    Line(Line),
    TimedOut,
    Closed,
}

fn next_line(rx: &Receiver<Line>, wait: Duration) -> Next {
    match rx.recv_timeout(wait) {
        Ok(line) => Next::Line(line),
        Err(RecvTimeoutError::Timeout) => Next::TimedOut,
        Err(RecvTimeoutError::Disconnected) => Next::Closed,
    }
}

/// Opens the log in-process (as the daemon would after the crash), checks it against
/// `acked`, and closes it again. Returns the head, or `None` when it does not open.
fn reopen_and_check(dir: &Path, acked: &Acked, summary: &mut Summary) -> Option<Seq> {
    let log = match SledLog::open(dir, OpenOptions::default()) {
        Ok(log) => log,
        Err(e) => {
            summary
                .violations
                .push(format!("the log does not open after the kill: {e}"));
            return None;
        }
    };
    if let Some(repair) = log.tail_repair() {
        if acked.by_seq.contains_key(&repair.seq) {
            summary.violations.push(format!(
                "seq {}: acknowledged, but dropped by the tail repair: {repair}",
                repair.seq
            ));
        }
        summary.tail_repairs.push(repair.to_string());
    }
    summary.violations.extend(check_log(&log, acked));
    summary.log_events = log.head();
    Some(log.head())
}

/// Checks every record of `log` against what was acknowledged; returns the violations
/// (at most [`MAX_VIOLATIONS`]).
fn check_log(log: &dyn EventLog, acked: &Acked) -> Vec<String> {
    let mut violations = Vec::new();
    let head = log.head();
    if head < acked.max_seq {
        violations.push(format!(
            "seq {}: acknowledged, but the log ends at head {head}",
            acked.max_seq
        ));
    }
    let mut expected_seq: Seq = 1;
    let mut last_ts = None;
    for item in log.read_from(1) {
        if violations.len() >= MAX_VIOLATIONS {
            break;
        }
        let env = match item {
            Ok(env) => env,
            Err(e) => {
                violations.push(format!("seq {expected_seq}: unreadable: {e}"));
                // The iterator keeps going past a damaged record: stay in step with it.
                expected_seq += 1;
                continue;
            }
        };
        if env.seq != expected_seq {
            violations.push(format!(
                "seq {expected_seq}: missing (the next record is seq {})",
                env.seq
            ));
            expected_seq = env.seq;
        }
        expected_seq += 1;
        if let Some(last) = last_ts {
            if env.ts < last {
                violations.push(format!(
                    "seq {}: time {} is before the previous record's {last}",
                    env.seq, env.ts
                ));
            }
        }
        last_ts = Some(env.ts);
        if let Some(origin) = acked.by_seq.get(&env.seq) {
            if let Some(why) = mismatch(&env, *origin) {
                violations.push(format!("seq {}: {why}", env.seq));
            }
        }
    }
    if violations.is_empty() && expected_seq != head + 1 {
        violations.push(format!(
            "seq {expected_seq}: missing (the head is {head}, the records end before it)"
        ));
    }
    violations
}

/// Why `env` is not the event `origin` acknowledged, if it is not.
fn mismatch(env: &Envelope, origin: Origin) -> Option<String> {
    if env.event == soak_event(origin) {
        return None;
    }
    let found = match &env.event {
        Event::TurnsRecorded(t) => format!("run {} turn {}", t.run_id, t.base_index),
        other => other.kind().to_owned(),
    };
    Some(format!(
        "holds {found}, but the ack said cycle {} appender {} counter {}",
        origin.cycle, origin.appender, origin.counter
    ))
}

fn finish(
    args: &SoakArgs,
    seed: u64,
    dir: &Path,
    started: Instant,
    summary: Summary,
    owned_dir: bool,
) -> anyhow::Result<Summary> {
    let elapsed = started.elapsed();
    let ok = summary.violations.is_empty();
    for violation in &summary.violations {
        eprintln!("VIOLATION: {violation}");
    }
    if args.json {
        let json = serde_json::json!({
            "ok": ok,
            "seed": seed,
            "dir": dir.display().to_string(),
            "cycles": summary.cycles,
            "appenders": args.appenders,
            "batch": args.batch,
            "acked_appends": summary.acked_appends,
            "acked_events": summary.acked_events,
            "cycles_with_acks": summary.cycles_with_acks,
            "log_events": summary.log_events,
            "tail_repairs": summary.tail_repairs,
            "torn_lines": summary.torn_lines,
            "violations": summary.violations,
            "elapsed_ms": elapsed.as_millis() as u64,
            "per_cycle": summary.per_cycle,
        });
        println!("{json}");
    } else {
        println!(
            "{}: {} cycles, {} acked events in {} appends ({} cycles with acks), \
             {} events in the log, {} tail repairs, {} torn ack lines, {:.1} s (seed {seed})",
            if ok { "ok" } else { "FAILED" },
            summary.cycles,
            summary.acked_events,
            summary.acked_appends,
            summary.cycles_with_acks,
            summary.log_events,
            summary.tail_repairs.len(),
            summary.torn_lines,
            elapsed.as_secs_f64(),
        );
    }
    if ok && owned_dir {
        let _ = std::fs::remove_dir_all(dir);
    } else if !ok {
        eprintln!("the log is kept in {}", dir.display());
    }
    Ok(summary)
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn fresh_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "car-log-soak-{}-{}",
        std::process::id(),
        clock_seed()
    ));
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use car_events::{ManualClock, MemLog};

    fn origin(appender: u32, counter: u32) -> Origin {
        Origin {
            cycle: 1,
            appender,
            counter,
        }
    }

    /// A log holding the events of `origins` at seqs 1.., appended through the writer.
    async fn log_of(origins: &[Origin]) -> Arc<MemLog> {
        let log = Arc::new(MemLog::new());
        let (writer, thread) = Writer::<()>::spawn(
            log.clone(),
            (),
            Stamper::deterministic(ManualClock::fixed(), 1),
        );
        for o in origins {
            writer.append(vec![soak_event(*o)]).await.unwrap();
        }
        writer.shutdown().await;
        thread.join();
        log
    }

    fn acked(pairs: &[(Seq, Origin)]) -> Acked {
        Acked {
            by_seq: pairs.iter().copied().collect(),
            max_seq: pairs.iter().map(|p| p.0).max().unwrap_or(0),
        }
    }

    #[tokio::test]
    async fn a_log_holding_what_was_acked_passes() {
        let log = log_of(&[origin(0, 0), origin(1, 0), origin(0, 1)]).await;
        let acks = acked(&[(1, origin(0, 0)), (3, origin(0, 1))]);
        assert_eq!(check_log(log.as_ref(), &acks), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_record_holding_another_event_is_a_violation() {
        let log = log_of(&[origin(0, 0), origin(1, 0)]).await;
        let acks = acked(&[(2, origin(1, 7))]);
        let violations = check_log(log.as_ref(), &acks);
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(violations[0].starts_with("seq 2: holds run c1.a1 turn 0"));
    }

    #[tokio::test]
    async fn an_acked_seq_past_the_head_is_a_violation() {
        let log = log_of(&[origin(0, 0)]).await;
        let acks = acked(&[(1, origin(0, 0)), (2, origin(0, 1))]);
        let violations = check_log(log.as_ref(), &acks);
        assert_eq!(
            violations,
            ["seq 2: acknowledged, but the log ends at head 1"]
        );
    }

    #[tokio::test]
    async fn a_damaged_record_is_a_violation_naming_its_seq() {
        let log = log_of(&[origin(0, 0), origin(0, 1), origin(0, 2)]).await;
        assert!(log.damage(2, vec![1, 0, 0, 0, 0, 9]));
        let violations = check_log(log.as_ref(), &Acked::default());
        assert_eq!(violations.len(), 1, "{violations:?}");
        assert!(
            violations[0].starts_with("seq 2: unreadable"),
            "{violations:?}"
        );
    }

    #[test]
    fn ack_lines_parse_and_anything_else_is_malformed() {
        let mut report = ChildReport::default();
        report.take("open 12");
        report.take("ack 13 2 5 40");
        report.take("ack 13 x 5 40");
        assert_eq!(report.open_head, Some(12));
        assert_eq!(report.acks, [(13, 2, 5, 40)]);
        assert_eq!(report.malformed, ["ack 13 x 5 40"]);
    }

    #[test]
    fn kill_plans_cover_early_and_late_kills_from_both_anchors() {
        let mut rng = StdRng::seed_from_u64(3);
        let plans: Vec<_> = (0..200).map(|_| KillPlan::draw(&mut rng, 1000)).collect();
        assert!(plans.iter().all(|p| p.delay <= Duration::from_millis(1000)));
        for anchor in [Anchor::Spawn, Anchor::Open] {
            let of = |p: &&KillPlan| p.anchor == anchor;
            assert!(plans.iter().filter(of).any(|p| p.delay.as_millis() <= 5));
            assert!(plans.iter().filter(of).any(|p| p.delay.as_millis() >= 500));
        }
    }

    #[test]
    fn the_cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
