//! The daemon crash soak (`car-soak`): writers are cut off by SIGKILL at random moments,
//! and after every restart each acknowledged turn is read back and checked.
//!
//! A cycle: N clients connect to the running daemon and write runs as an agent does
//! (`runs.start` with an idempotency key, `runs.record_turns` in batches of 1 to
//! `max_batch` turns, `runs.complete`, then the next run), one request at a time, each
//! remembering every answer. After a seeded random delay the daemon gets SIGKILL; the
//! clients see their connections drop wherever they were. The daemon is started again on
//! the same data directory, and a fresh host session reads every run the clients touched
//! with `runs.get_trace` (paging with its cursor) and checks, run by run:
//!
//! - a run whose `runs.start` was answered exists (one that was not may or may not);
//! - its turns are indexed 0, 1, 2 … with no gap and no duplicate, and each holds exactly
//!   the turn the client sent at that index (turn contents are a pure function of run and
//!   index, so the check regenerates them);
//! - every acknowledged turn is there; beyond them, only the whole of the one batch still
//!   unanswered at the kill may be (a batch is atomic: all of it or none);
//! - a run whose `runs.complete` was answered ended `completed` with that outcome; a run
//!   in progress at the kill ended `incomplete`/`daemon_restart`; a run whose
//!   `runs.complete` was unanswered ended one way or the other;
//! - the daemon's own count of adopted runs (its start-up line) equals the runs the check
//!   found ended `daemon_restart` in that cycle.
//!
//! Then the clients reconnect and go on with new runs. At the end every run of every cycle
//! is checked once more against the final daemon, so a later restart that damaged an older
//! run is caught too. Each violation names the run, the turn index when there is one, and
//! the reason.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};

use crate::load::cycles;
use crate::load::server::{ServerProcess, ServerSpec};
use crate::load::ws::{CALL_TIMEOUT, Conn};

/// The daemon's per-run turn limit (PROTOCOL.md §3.3): a run must never reach it, or
/// batches would be refused for a reason the soak does not test.
const RUN_TURN_LIMIT: u32 = 2000;
/// Padding in every turn's output so a turn is the size of a small real one (~200 bytes
/// of JSON) rather than a few bytes.
const PAD: &str = "soak-output-soak-output-soak-output-soak-output-soak-output-soak-output";
/// Retention is not under test: with the daemon's default (10 000 runs) a long soak
/// would see its oldest runs evicted and could no longer read them back.
const MAX_RUNS: &str = "1000000000";

/// What to run.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakOptions {
    /// Kill/restart/check cycles.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub cycles: u32,
    /// Concurrent writing clients.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// Seed of the kill schedule and of the batch sizes (default: from the clock; printed
    /// either way, so a run can be repeated).
    #[arg(long)]
    pub seed: Option<u64>,
    /// The longest time from the clients' start to the kill, in milliseconds.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_kill_ms: u64,
    /// The most turns per `runs.record_turns` (each batch draws 1 to this many).
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub max_batch: u32,
    /// The most `runs.record_turns` calls per run before `runs.complete`.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=2000))]
    pub max_batches_per_run: u32,
    /// The data directory (kept). Default: a fresh directory under `target/load`,
    /// removed after a clean run and kept after a violation.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The daemon binary (default: this executable, which runs `car_gateway::cli::main`
    /// when re-executed by the soak).
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Skip the final check of every run against the last daemon.
    #[arg(long)]
    pub no_final_check: bool,
}

/// One broken promise.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// The cycle whose check found it (0: the final check).
    pub cycle: u32,
    /// The run (`-` for a daemon-wide finding).
    pub run_id: String,
    /// The turn index, when the violation is about one turn.
    pub index: Option<u32>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = if self.cycle == 0 {
            "final check".to_owned()
        } else {
            format!("cycle {}", self.cycle)
        };
        match self.index {
            Some(index) => write!(f, "{at}: run {} turn {index}: {}", self.run_id, self.reason),
            None => write!(f, "{at}: run {}: {}", self.run_id, self.reason),
        }
    }
}

/// One cycle's figures.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    /// Its number, from 1.
    pub cycle: u32,
    /// When the daemon was killed, after the clients started.
    pub kill_after_ms: u64,
    /// Turns acknowledged in the cycle.
    pub acked_turns: u64,
    /// `runs.record_turns` calls acknowledged.
    pub acked_batches: u64,
    /// Runs whose `runs.start` was answered.
    pub runs_started: u64,
    /// Runs whose `runs.complete` was answered.
    pub runs_completed: u64,
    /// Runs the restarted daemon reported adopting.
    pub runs_adopted: u64,
    /// Runs checked after the restart.
    pub runs_checked: u64,
    /// The restarted daemon's start-up, spawn to listening, in milliseconds.
    pub restart_ms: u64,
    /// Violations found in the cycle.
    pub violations: u64,
}

impl std::fmt::Display for CycleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cycle {:>3}: killed at {:>4} ms; acked {:>6} turns in {:>5} batches; runs: {:>3} \
             started, {:>3} completed, {:>2} adopted; checked {:>3} runs; restart {:>4} ms; \
             violations {}",
            self.cycle,
            self.kill_after_ms,
            self.acked_turns,
            self.acked_batches,
            self.runs_started,
            self.runs_completed,
            self.runs_adopted,
            self.runs_checked,
            self.restart_ms,
            self.violations
        )
    }
}

/// The whole soak's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The seed used.
    pub seed: u64,
    /// Cycles run.
    pub cycles: u32,
    /// Writing clients.
    pub clients: u32,
    /// Turns acknowledged in all.
    pub acked_turns: u64,
    /// `runs.record_turns` calls acknowledged.
    pub acked_batches: u64,
    /// Runs started (answered).
    pub runs_started: u64,
    /// Runs completed (answered).
    pub runs_completed: u64,
    /// Runs the daemon adopted at its restarts.
    pub runs_adopted: u64,
    /// Runs checked in the final check (0 when skipped).
    pub final_checked: u64,
    /// Every violation found.
    pub violations: Vec<Violation>,
    /// Wall-clock time of the soak.
    pub elapsed_secs: f64,
    /// The data directory (kept after a violation or when given).
    pub data_dir: PathBuf,
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} cycles, {} clients, seed {}: {} acknowledged turns in {} batches; runs: {} \
             started, {} completed, {} adopted; final check of {} runs; {} violations; {:.1} s",
            self.cycles,
            self.clients,
            self.seed,
            self.acked_turns,
            self.acked_batches,
            self.runs_started,
            self.runs_completed,
            self.runs_adopted,
            self.final_checked,
            self.violations.len(),
            self.elapsed_secs
        )
    }
}

/// How far a run's `runs.complete` got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completion {
    NotSent,
    Unanswered,
    Acked,
}

/// What a client knows of one of its runs.
#[derive(Debug, Clone)]
struct RunLedger {
    /// The run id, which is also its idempotency key (so even an unanswered start can be
    /// looked up).
    run_id: String,
    start_acked: bool,
    /// Turns `0..acked_turns` were acknowledged.
    acked_turns: u32,
    /// In this many `runs.record_turns` calls.
    acked_batches: u32,
    /// Turns of a `runs.record_turns` sent and never answered (0: none).
    unanswered: u32,
    completion: Completion,
}

/// How a checked run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Missing,
    Completed,
    Restarted,
    Broken,
}

/// A writing client, across cycles.
#[derive(Debug)]
struct Writer {
    client: u32,
    next_run: u32,
    rng: StdRng,
}

/// The turn a client sends at `index` of `run_id`: a pure function, so the check can
/// regenerate what was sent.
fn soak_turn(run_id: &str, index: u32) -> Value {
    json!({
        "prompt": format!("{run_id} turn {index}"),
        "tool": "soak.write",
        "parameters": {"run_id": run_id, "index": index},
        "output": format!("{PAD} {index}"),
    })
}

/// Runs the soak; `on_cycle` gets each cycle's figures as it ends. `Err` only when the
/// soak could not be set up or run (no daemon binary, a connection to a live daemon
/// failing); broken promises are in the report's violations.
pub async fn run_soak(
    options: &SoakOptions,
    mut on_cycle: impl FnMut(&CycleReport),
) -> anyhow::Result<SoakReport> {
    if options.max_batch * options.max_batches_per_run >= RUN_TURN_LIMIT {
        bail!(
            "--max-batch × --max-batches-per-run must stay below the daemon's {RUN_TURN_LIMIT} \
             turns per run"
        );
    }
    let started = Instant::now();
    let seed = cycles::seed(options.seed);
    let mut scratch = cycles::scratch(options.data_dir.as_ref(), "soak")?;
    let spec = ServerSpec::new(scratch.path())
        .bin(options.server_bin.clone())
        .args(["--max-runs", MAX_RUNS]);
    let mut schedule = StdRng::seed_from_u64(seed);
    let mut writers: Vec<Writer> = (0..options.clients)
        .map(|client| Writer {
            client,
            next_run: 0,
            rng: cycles::client_rng(seed, client),
        })
        .collect();
    let mut report = SoakReport {
        seed,
        cycles: 0,
        clients: options.clients,
        acked_turns: 0,
        acked_batches: 0,
        runs_started: 0,
        runs_completed: 0,
        runs_adopted: 0,
        final_checked: 0,
        violations: Vec::new(),
        elapsed_secs: 0.0,
        data_dir: scratch.path().to_owned(),
    };
    let mut all_runs: Vec<RunLedger> = Vec::new();
    let mut server = ServerProcess::launch(&spec)
        .await
        .context("starting the daemon")?;
    for cycle in 1..=options.cycles {
        let kill_after = cycles::kill_after(&mut schedule, options.max_kill_ms);
        let tasks: Vec<_> = writers
            .drain(..)
            .map(|mut writer| {
                let (addr, token) = (server.addr, server.auth_token.clone());
                let limits = (options.max_batch, options.max_batches_per_run);
                tokio::spawn(async move {
                    let mut runs = Vec::new();
                    let mut violations = Vec::new();
                    let ended = write_until_cut(
                        addr,
                        &token,
                        &mut writer,
                        cycle,
                        limits,
                        seed,
                        &mut runs,
                        &mut violations,
                    )
                    .await;
                    (writer, runs, violations, ended)
                })
            })
            .collect();
        // The kill schedule itself: the daemon dies this long after the clients started.
        tokio::time::sleep(Duration::from_millis(kill_after)).await;
        server.kill().await.context("killing the daemon")?;
        let mut cycle_runs = Vec::new();
        let mut found = Vec::new();
        for task in tasks {
            // Every client ends on its own once its connection drops (each call is
            // bounded by CALL_TIMEOUT).
            let (writer, runs, violations, _ended) = tokio::time::timeout(CALL_TIMEOUT * 2, task)
                .await
                .map_err(|_| anyhow!("a client did not notice the kill within {CALL_TIMEOUT:?}"))?
                .context("a client task panicked")?;
            writers.push(writer);
            cycle_runs.extend(runs);
            found.extend(violations);
        }
        let restarted = ServerProcess::launch(&spec).await;
        server = match restarted {
            Ok(server) => server,
            Err(err) => {
                report.violations.push(Violation {
                    cycle,
                    run_id: "-".into(),
                    index: None,
                    reason: format!("the daemon did not restart after the kill: {err:#}"),
                });
                report.cycles = cycle;
                scratch.keep();
                report.elapsed_secs = started.elapsed().as_secs_f64();
                return Ok(report);
            }
        };
        let adopted = server.startup.runs_adopted.unwrap_or(0);
        let mut checker =
            Conn::authenticated(server.addr, json!({"host_token": server.host_token}))
                .await
                .context("connecting the checker")?;
        let mut restarted_runs = 0;
        for run in &cycle_runs {
            if check_run(&mut checker, run, cycle, &mut found).await? == Found::Restarted {
                restarted_runs += 1;
            }
        }
        if restarted_runs != adopted {
            found.push(Violation {
                cycle,
                run_id: "-".into(),
                index: None,
                reason: format!(
                    "the daemon adopted {adopted} runs at its restart, but {restarted_runs} \
                     of this cycle's runs ended daemon_restart"
                ),
            });
        }
        checker.close().await;
        let figures = CycleReport {
            cycle,
            kill_after_ms: kill_after,
            acked_turns: cycle_runs.iter().map(|r| u64::from(r.acked_turns)).sum(),
            acked_batches: cycle_runs.iter().map(|r| u64::from(r.acked_batches)).sum(),
            runs_started: cycle_runs.iter().filter(|r| r.start_acked).count() as u64,
            runs_completed: cycle_runs
                .iter()
                .filter(|r| r.completion == Completion::Acked)
                .count() as u64,
            runs_adopted: adopted,
            runs_checked: cycle_runs.len() as u64,
            restart_ms: server.startup.to_listening.as_millis() as u64,
            violations: found.len() as u64,
        };
        on_cycle(&figures);
        report.cycles = cycle;
        report.acked_turns += figures.acked_turns;
        report.acked_batches += figures.acked_batches;
        report.runs_started += figures.runs_started;
        report.runs_completed += figures.runs_completed;
        report.runs_adopted += adopted;
        report.violations.extend(found);
        all_runs.extend(cycle_runs);
    }
    if !options.no_final_check {
        let mut checker =
            Conn::authenticated(server.addr, json!({"host_token": server.host_token}))
                .await
                .context("connecting the final checker")?;
        for run in &all_runs {
            check_run(&mut checker, run, 0, &mut report.violations).await?;
        }
        report.final_checked = all_runs.len() as u64;
        checker.close().await;
    }
    server.terminate().await.context("stopping the daemon")?;
    if !report.violations.is_empty() {
        scratch.keep();
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Writes runs until the connection drops (the kill) or an answer breaks a promise;
/// every run and every answer goes into `runs`. Returns why it stopped.
#[allow(clippy::too_many_arguments)]
async fn write_until_cut(
    addr: std::net::SocketAddr,
    token: &str,
    writer: &mut Writer,
    cycle: u32,
    (max_batch, max_batches): (u32, u32),
    seed: u64,
    runs: &mut Vec<RunLedger>,
    violations: &mut Vec<Violation>,
) -> anyhow::Error {
    let mut conn = match Conn::authenticated(addr, json!({"token": token})).await {
        Ok(conn) => conn,
        Err(err) => return err,
    };
    let agent_id = format!("soak-agent-{}", writer.client);
    loop {
        writer.next_run += 1;
        let run_id = format!("soak-{seed:016x}-c{}-r{}", writer.client, writer.next_run);
        runs.push(RunLedger {
            run_id: run_id.clone(),
            start_acked: false,
            acked_turns: 0,
            acked_batches: 0,
            unanswered: 0,
            completion: Completion::NotSent,
        });
        let Some(run) = runs.last_mut() else {
            unreachable!("a run was just pushed");
        };
        let mut broken = |index: Option<u32>, reason: String| {
            violations.push(Violation {
                cycle,
                run_id: run_id.clone(),
                index,
                reason,
            });
            anyhow!("stopped after a violation")
        };
        let params = json!({
            "intent": format!("soak cycle {cycle}"),
            "agent_id": agent_id,
            "idempotency_key": run_id,
        });
        match conn.call("runs.start", params).await {
            Err(err) => return err,
            Ok(Ok(result)) if result["run_id"] == run_id.as_str() => run.start_acked = true,
            Ok(answer) => return broken(None, format!("runs.start answered {answer:?}")),
        }
        let batches = writer.rng.random_range(1..=max_batches);
        for _ in 0..batches {
            let count = writer.rng.random_range(1..=max_batch);
            let base = run.acked_turns;
            let turns: Vec<Value> = (base..base + count)
                .map(|i| soak_turn(&run_id, i))
                .collect();
            run.unanswered = count;
            let answer = conn
                .call(
                    "runs.record_turns",
                    json!({"run_id": run_id, "turns": turns}),
                )
                .await;
            match answer {
                Err(err) => return err,
                Ok(Ok(result))
                    if result["ok"] == true
                        && result["base_index"] == base
                        && result["count"] == count =>
                {
                    run.acked_turns += count;
                    run.acked_batches += 1;
                    run.unanswered = 0;
                }
                Ok(answer) => {
                    return broken(
                        Some(base),
                        format!("runs.record_turns of {count} turns at {base} answered {answer:?}"),
                    );
                }
            }
        }
        run.completion = Completion::Unanswered;
        let outcome = json!({"status": "success", "summary": run_id});
        match conn
            .call(
                "runs.complete",
                json!({"run_id": run_id, "outcome": outcome}),
            )
            .await
        {
            Err(err) => return err,
            Ok(Ok(result)) if result["ok"] == true => run.completion = Completion::Acked,
            Ok(answer) => return broken(None, format!("runs.complete answered {answer:?}")),
        }
    }
}

/// Reads a run's whole trace, page by page; `None` when the daemon does not know it.
async fn read_trace(conn: &mut Conn, run_id: &str) -> anyhow::Result<Option<Vec<Value>>> {
    let mut records = Vec::new();
    let mut cursor = 0u64;
    loop {
        let page = conn
            .ok(
                "runs.get_trace",
                json!({"run_id": run_id, "cursor": cursor}),
            )
            .await?;
        if page["not_found"] == true {
            if !records.is_empty() {
                bail!("run {run_id} vanished while its trace was being read");
            }
            return Ok(None);
        }
        let batch = page["records"]
            .as_array()
            .with_context(|| format!("runs.get_trace of {run_id}: no records in {page}"))?;
        let next = page["cursor"]
            .as_u64()
            .with_context(|| format!("runs.get_trace of {run_id}: no cursor"))?;
        let ended = batch.last().is_some_and(|r| r["record"] == "ended");
        if batch.is_empty() || ended {
            records.extend(batch.iter().cloned());
            return Ok(Some(records));
        }
        if next <= cursor {
            bail!("runs.get_trace of {run_id}: the cursor did not move on from {cursor}");
        }
        records.extend(batch.iter().cloned());
        cursor = next;
    }
}

/// The fields of a turn record that come from the client (the rest the daemon adds).
const SENT_FIELDS: [&str; 4] = ["prompt", "tool", "parameters", "output"];

/// Checks one run against what its client was told (module docs); violations go to
/// `violations`. `Err` only when the daemon could not be asked.
async fn check_run(
    conn: &mut Conn,
    run: &RunLedger,
    cycle: u32,
    violations: &mut Vec<Violation>,
) -> anyhow::Result<Found> {
    let mut broken = |index: Option<u32>, reason: String| {
        violations.push(Violation {
            cycle,
            run_id: run.run_id.clone(),
            index,
            reason,
        });
        Found::Broken
    };
    let Some(records) = read_trace(conn, &run.run_id).await? else {
        if run.start_acked {
            return Ok(broken(None, "an acknowledged run is missing".into()));
        }
        return Ok(Found::Missing);
    };
    let Some((first, rest)) = records.split_first() else {
        return Ok(broken(None, "the trace is empty".into()));
    };
    if first["record"] != "started" || first["run_id"] != run.run_id.as_str() {
        return Ok(broken(
            None,
            format!("the trace does not open with its start: {first}"),
        ));
    }
    let mut turns = 0u32;
    let mut ended = None;
    for record in rest {
        if ended.is_some() {
            return Ok(broken(None, format!("a record after the end: {record}")));
        }
        match record["record"].as_str() {
            Some("turn") => {
                let index = record["index"].as_u64();
                if index != Some(u64::from(turns)) {
                    let reason = if index.is_some_and(|i| i < u64::from(turns)) {
                        "a duplicate turn index"
                    } else {
                        "a gap in the turn indices"
                    };
                    return Ok(broken(
                        Some(turns),
                        format!("{reason}: expected index {turns}, found {record}"),
                    ));
                }
                let sent = soak_turn(&run.run_id, turns);
                if let Some(field) = SENT_FIELDS.iter().find(|f| record[**f] != sent[**f]) {
                    return Ok(broken(
                        Some(turns),
                        format!("`{field}` differs from what was sent: {record}"),
                    ));
                }
                turns += 1;
            }
            Some("ended") => ended = Some(record),
            _ => return Ok(broken(None, format!("an unexpected record: {record}"))),
        }
    }
    if !run.start_acked && turns > 0 {
        return Ok(broken(
            Some(0),
            format!("{turns} turns in a run whose start was never acknowledged"),
        ));
    }
    if turns < run.acked_turns {
        return Ok(broken(
            Some(turns),
            format!(
                "acknowledged turn missing: {} turns acknowledged, {turns} in the trace",
                run.acked_turns
            ),
        ));
    }
    if turns != run.acked_turns && turns != run.acked_turns + run.unanswered {
        return Ok(broken(
            Some(run.acked_turns),
            format!(
                "{turns} turns in the trace: {} acknowledged, and the unanswered batch of {}                  is neither absent nor whole",
                run.acked_turns, run.unanswered
            ),
        ));
    }
    let Some(ended) = ended else {
        return Ok(broken(None, "still in progress after the restart".into()));
    };
    let termination = &ended["termination"];
    let found = match termination["kind"].as_str() {
        Some("outcome") if termination["outcome"]["summary"] == run.run_id.as_str() => {
            Found::Completed
        }
        Some("incomplete") if termination["reason"] == "daemon_restart" => Found::Restarted,
        _ => return Ok(broken(None, format!("an unexpected end: {termination}"))),
    };
    let expected = match run.completion {
        Completion::Acked => found == Found::Completed,
        Completion::Unanswered => true,
        Completion::NotSent => found == Found::Restarted,
    };
    if !expected {
        let told = match run.completion {
            Completion::Acked => "acknowledged as completed",
            _ => "in progress at the kill",
        };
        return Ok(broken(None, format!("{told}, but ended {termination}")));
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short soak against the debug daemon (`car-test-server`, built beside this test by
    /// `cargo test`): three kills, every acknowledged turn read back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_soak_finds_every_acknowledged_turn() {
        let Some(server) = cycles::test_server_bin() else {
            eprintln!("skipped: car-test-server is not built (run `cargo test -p car-tests`)");
            return;
        };
        let options = SoakOptions {
            cycles: 3,
            clients: 4,
            seed: Some(7),
            max_kill_ms: 400,
            max_batch: 8,
            max_batches_per_run: 4,
            data_dir: None,
            server_bin: Some(server),
            no_final_check: false,
        };
        let report = run_soak(&options, |_| {}).await.unwrap();
        assert_eq!(report.cycles, 3);
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        assert!(report.final_checked >= report.runs_started);
    }
}
