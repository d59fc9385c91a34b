//! A deterministic little daemon for the tests that need a whole log: commands are decided
//! against the live state with [`decide`] and their events stamped and folded at once, the
//! way the single writer does it, with time from a [`ManualClock`] (one second per
//! command unless moved on) and ids from [`Stamper::deterministic`] / [`SeededIds`].
//!
//! The golden replay logs are written by it, and the trace tests read its log back through
//! a [`MemLog`].

use car_events::event::{DaemonStarted, Role};
use car_events::{
    Clock, Envelope, Event, EventLog, IdSource, ManualClock, MemLog, SCHEMA_VERSION, SeededIds,
    Stamper,
};
use car_projections::decide::{AdmittedTurns, RecordTurns, StartRun};
use car_projections::recovery::{self, Retention};
use car_projections::{Actor, Command, Refusal, State, decide};
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::support::{authenticate, close_session, end_abandoned, open_session, start_run};

/// A log being written by commands.
#[derive(Debug)]
pub(crate) struct Scenario {
    state: State,
    log: Vec<Envelope>,
    clock: ManualClock,
    stamper: Stamper,
    /// The ids the gateway would draw (run ids).
    ids: SeededIds,
    last_ts: DateTime<Utc>,
}

impl Scenario {
    /// An empty log at [`crate::support::t0`], ids from `seed`.
    pub(crate) fn new(seed: u64) -> Self {
        let clock = ManualClock::fixed();
        Self {
            state: State::new(),
            log: Vec::new(),
            stamper: Stamper::deterministic(clock.clone(), seed),
            clock,
            ids: SeededIds::new(seed.wrapping_add(1)),
            last_ts: DateTime::<Utc>::MIN_UTC,
        }
    }

    /// The state after every event so far.
    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// The events so far.
    pub(crate) fn log(&self) -> &[Envelope] {
        &self.log
    }

    /// The log in a [`MemLog`] (through the codec, as the daemon stores it).
    pub(crate) fn mem_log(&self) -> MemLog {
        let log = MemLog::new();
        log.append(&self.log).expect("append to an empty MemLog");
        log
    }

    /// Moves the clock on.
    pub(crate) fn advance(&mut self, by: TimeDelta) {
        self.clock.advance(by);
    }

    /// The clock now.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// A fresh UUID, as the gateway draws for a new run.
    pub(crate) fn fresh_id(&self) -> String {
        self.ids.uuid().to_string()
    }

    /// Stamps `events` and folds them; panics on a contradiction.
    pub(crate) fn append(&mut self, events: Vec<Event>) {
        for event in events {
            self.last_ts = self.stamper.now_after(self.last_ts);
            let env = Envelope {
                seq: self.state.head() + 1,
                event_id: self.stamper.ids().uuid(),
                ts: self.last_ts,
                schema_version: SCHEMA_VERSION,
                event,
            };
            if let Err(err) = self.state.apply(&env) {
                panic!("the scenario wrote a contradiction: {err}");
            }
            self.log.push(env);
        }
    }

    /// One second later, decides `command` and appends what it decided.
    pub(crate) fn exec(&mut self, command: Command) -> Result<Vec<Event>, Refusal> {
        self.advance(TimeDelta::seconds(1));
        let events = decide(&self.state, &command)?;
        self.append(events.clone());
        Ok(events)
    }

    /// [`Scenario::exec`] of a command that must be accepted.
    pub(crate) fn must(&mut self, command: Command) -> Vec<Event> {
        match self.exec(command.clone()) {
            Ok(events) => events,
            Err(refusal) => panic!("{command:?} was refused: {refusal}"),
        }
    }

    /// `daemon.started` of a daemon with pid `pid`.
    pub(crate) fn daemon_started(&mut self, pid: u32) {
        self.advance(TimeDelta::seconds(1));
        self.append(vec![
            DaemonStarted {
                version: "0.1.0".into(),
                pid,
                data_dir: "/var/lib/car".into(),
                listen: "127.0.0.1:9100".into(),
            }
            .into(),
        ]);
    }

    /// A start-up as the daemon does it: `daemon.started`, the recovery, `daemon.recovered`.
    pub(crate) fn start_daemon(&mut self, pid: u32, retention: &Retention) {
        let replayed = self.state.head();
        self.daemon_started(pid);
        let events = recovery::recover(&self.state, self.now(), retention);
        let summary = recovery::summarize(&events, replayed);
        self.append(events);
        self.append(vec![summary.into()]);
    }

    /// A clean stop.
    pub(crate) fn stop_daemon(&mut self) {
        self.advance(TimeDelta::seconds(1));
        let events = recovery::shutdown(&self.state, "signal");
        self.append(events);
    }

    /// Retention now.
    pub(crate) fn gc(&mut self, retention: &Retention) {
        let events = recovery::gc(&self.state, self.now(), retention);
        self.append(events);
    }

    /// A connection that authenticates with `role`; returns its actor.
    pub(crate) fn connect(&mut self, client: &str, role: Role, agent: Option<&str>) -> Actor {
        self.must(open_session(client));
        self.must(authenticate(client, role, agent));
        Actor::new(client, role, agent.map(Into::into))
    }

    /// A connection that ends, then its disconnect grace.
    pub(crate) fn disconnect(&mut self, actor: &Actor) {
        self.must(close_session(&actor.client_id));
        self.advance(TimeDelta::milliseconds(250));
        self.must(end_abandoned(&actor.client_id, actor.bound_agent()));
    }

    /// `runs.start` for `agent` (`None`: the bound agent) with a fresh id; returns the run id.
    pub(crate) fn start(
        &mut self,
        actor: &Actor,
        agent: Option<&str>,
        key: Option<&str>,
    ) -> String {
        let new_run_id = self.fresh_id();
        self.must(Command::StartRun(StartRun {
            new_run_id: new_run_id.clone(),
            agent_id: agent.map(Into::into),
            idempotency_key: key.map(Into::into),
            ..start_run(actor.clone())
        }));
        key.map_or(new_run_id, Into::into)
    }

    /// `runs.record_turns`; a refusal is returned, not appended.
    pub(crate) fn record(
        &mut self,
        actor: &Actor,
        run: &str,
        turns: &[Value],
    ) -> Result<Vec<Event>, Refusal> {
        let turns = AdmittedTurns::admit(turns)?;
        self.exec(Command::RecordTurns(RecordTurns {
            actor: actor.clone(),
            run_id: run.into(),
            turns,
        }))
    }
}
