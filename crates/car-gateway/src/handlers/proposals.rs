//! `proposal.submit` (PROTOCOL.md §4.2): a proposal's actions carried out one after
//! another as `tools.execute` calls back to the submitting client.
//!
//! The proposal runs in its own task (the connection's reader must stay free to read the
//! client's tool replies). Every dispatch and every way a call ends (result, error,
//! timeout, disconnect) is an event, with its timing, so `car-replay` can audit tool calls;
//! every finished action is also a turn of the session's current run.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use car_events::event::{
    Event, ProposalActionFinished, ProposalFinished, ProposalResultRecorded, ProposalSubmitted,
    SessionHalted, ToolCallDispatched,
};
use car_events::{JsonText, Seq};
use car_projections::decide::{
    AdmittedTurns, Command, DispatchToolCall, FinishToolCall, RecordTurns, ToolCallOutcome,
};
use car_projections::proposal_result::ResultBuilder;
use car_projections::{Actor, halts, tool_calls};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::gate;
use crate::live_proposals::ControlGuard;
use crate::outbound::Outbound;
use crate::reads::read_blocking;
use crate::rpc::{self, RpcError};
use crate::session::{Responder, Session};
use crate::tools::{CallTable, Policy, ToolReply};

/// Extra time a client gets beyond an action's own `timeout_ms` (PROTOCOL.md §4.2).
const TIMEOUT_SLACK: Duration = Duration::from_secs(5);
/// Default extra attempts with `failure_behavior: retry` (PROTOCOL.md §4.2).
const DEFAULT_MAX_RETRIES: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Behavior {
    Abort,
    Continue,
    Retry,
}

#[derive(Debug, Clone, Deserialize)]
struct Action {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    tool: String,
    parameters: Option<Value>,
    timeout_ms: Option<u64>,
    max_retries: Option<u32>,
    failure_behavior: Option<Behavior>,
}

#[derive(Debug, Deserialize)]
struct ProposalParams {
    id: Option<String>,
    actions: Vec<Action>,
}

#[derive(Debug, Deserialize)]
struct SubmitParams {
    proposal: ProposalParams,
}

fn validate(params: Value) -> Result<ProposalParams, RpcError> {
    let SubmitParams { proposal } = rpc::parse(params)?;
    let mut ids = HashSet::new();
    for (i, action) in proposal.actions.iter().enumerate() {
        let field = |name: &str| format!("proposal.actions[{i}].{name}");
        if action.kind.as_deref().is_some_and(|k| k != "tool_call") {
            return Err(RpcError::params(
                &field("type"),
                "only tool_call is supported",
            ));
        }
        if action.id.trim().is_empty() {
            return Err(RpcError::params(&field("id"), "must not be empty"));
        }
        if !ids.insert(action.id.as_str()) {
            return Err(RpcError::params(
                &field("id"),
                format!("duplicate action id `{}`", action.id),
            ));
        }
        if action.tool.trim().is_empty() {
            return Err(RpcError::params(&field("tool"), "must not be empty"));
        }
    }
    if proposal
        .id
        .as_deref()
        .is_some_and(|id| id.trim().is_empty())
    {
        return Err(RpcError::params("proposal.id", "must not be empty"));
    }
    Ok(proposal)
}

/// `proposal.submit`.
pub(crate) async fn submit(session: &mut Session, params: Value, responder: Responder) {
    let prepared = validate(params).and_then(|proposal| Ok((proposal, session.actor()?.clone())));
    let (proposal, actor) = match prepared {
        Ok(prepared) => prepared,
        Err(err) => return responder.send(Err(err)).await,
    };
    if let (true, Some(run_id)) = (session.current_run_resumed, session.current_run.clone()) {
        // A resumed run is for recovery only (§14.2): stored results, nothing runs.
        let app = session.app.clone();
        return session.reply_later(responder, async move {
            stored_result(&app, &run_id, proposal.id.as_deref()).await
        });
    }
    let runner = Runner {
        app: session.app.clone(),
        out: session.out.clone(),
        calls: session.tools.calls(),
        client_id: session.client_id.clone(),
        actor,
        run_id: session.current_run.clone(),
        proposal_id: proposal.id.clone().unwrap_or_else(|| session.app.new_id()),
        registered: (!session.tools.tools.is_empty())
            .then(|| session.tools.tools.keys().cloned().collect()),
        policies: session.tools.policies.clone(),
        control: session
            .current_run
            .as_deref()
            .map(|run_id| session.app.live_proposals.register(run_id)),
    };
    // Not under the handler deadline: a proposal waits for tools by design, each call
    // with its own timeout.
    tokio::spawn(async move {
        let result = runner.run(proposal.actions).await;
        responder.send(result).await;
    });
}

/// How one action ended.
#[derive(Debug)]
enum Status {
    Succeeded(Value),
    Failed(String),
    Rejected(String),
}

struct Runner {
    app: Arc<App>,
    out: Outbound,
    calls: CallTable,
    client_id: String,
    actor: Actor,
    run_id: Option<String>,
    proposal_id: String,
    /// The tools the session registered; `None` when it registered none (then any tool
    /// name may be called).
    registered: Option<BTreeSet<String>>,
    policies: Vec<Policy>,
    /// Registered under the run while the proposal runs, so `runs.cancel` can stop it.
    control: Option<ControlGuard>,
}

/// How an action's last attempt ended, besides its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// Succeeded, or failed in a way `failure_behavior` decides about.
    Normal,
    /// The client said the failure is terminal: no retry, the session halts (§14.5).
    Terminal,
    /// The run was cancelled (§14.1): the proposal skips its later actions.
    Cancelled,
}

impl Runner {
    /// The run's cancellation text, once `runs.cancel` stopped it.
    fn cancelled(&self) -> Option<String> {
        self.control.as_ref().and_then(ControlGuard::cancelled)
    }

    async fn run(self, actions: Vec<Action>) -> Result<Value, RpcError> {
        let submitted = Command::SubmitProposal(ProposalSubmitted {
            proposal_id: self.proposal_id.clone(),
            client_id: self.client_id.clone(),
            run_id: self.run_id.clone(),
            action_ids: actions.iter().map(|a| a.id.clone()).collect(),
        });
        self.app.execute(submitted, |_, _| ()).await??;
        let client_id = self.client_id.clone();
        let halted = self
            .app
            .writer
            .read(move |state| halts::is_halted(state, &client_id))
            .await?;
        let mut result = ResultBuilder::default();
        let mut stopped = false;
        let mut failed = false;
        for action in &actions {
            if stopped || self.cancelled().is_some() {
                result.skipped(&action.id);
                failed = true;
                continue;
            }
            let parameters = action.parameters.clone().unwrap_or_else(|| json!({}));
            let (status, attempts, ending) = if halted {
                (Status::Rejected(halts::HALTED.into()), 0, Ending::Normal)
            } else {
                self.run_action(action, &parameters).await
            };
            let outcome = self.outcome(action, &status, attempts);
            self.record_action(action, &parameters, &status, &outcome)
                .await;
            if ending == Ending::Terminal {
                if let Status::Failed(error) = &status {
                    self.halt(action, error).await;
                }
            }
            result.outcome(&outcome);
            if !matches!(status, Status::Succeeded(_)) {
                failed = true;
                stopped =
                    ending != Ending::Normal || action.failure_behavior != Some(Behavior::Continue);
            }
        }
        failed |= stopped;
        let final_state = if failed { "failed" } else { "completed" };
        let result = result.finish(&self.proposal_id, final_state);
        // The result is stored before it is sent (§14.5), for `proposal.result`.
        let finished = Command::CompleteProposal(
            ProposalFinished {
                proposal_id: self.proposal_id.clone(),
                final_state: final_state.into(),
            },
            ProposalResultRecorded {
                proposal_id: self.proposal_id.clone(),
                principal: self.actor.principal(),
                result: JsonText::from_value(&result),
            },
        );
        if let Err(err) = self.app.execute(finished, |_, _| ()).await {
            tracing::warn!(%err, proposal_id = %self.proposal_id, "could not record the end of a proposal");
        }
        Ok(result)
    }

    /// Records that a terminal tool failure halted this session (§14.5).
    async fn halt(&self, action: &Action, error: &str) {
        let halt = Command::HaltSession(halts::HaltSession {
            halt: SessionHalted {
                client_id: self.client_id.clone(),
                proposal_id: self.proposal_id.clone(),
                action_id: action.id.clone(),
                error: error.to_owned(),
            },
        });
        if let Err(err) = self.app.execute(halt, |_, _| ()).await {
            tracing::warn!(%err, client_id = %self.client_id, "could not record a session halt");
        }
    }

    /// Runs one action: checks, the gate, then one or more attempts.
    async fn run_action(&self, action: &Action, parameters: &Value) -> (Status, u32, Ending) {
        if let Some(registered) = &self.registered {
            if !registered.contains(&action.tool) {
                return (
                    Status::Failed(format!("unknown tool: {}", action.tool)),
                    0,
                    Ending::Normal,
                );
            }
        }
        if let Some(policy) = self
            .policies
            .iter()
            .find(|p| p.denies(&action.tool, parameters))
        {
            return (
                Status::Rejected(format!("rejected by policy '{}'", policy.name)),
                0,
                Ending::Normal,
            );
        }
        if gate::is_gated(&self.app, &action.tool) {
            let details = gate::details("tool", &action.tool, parameters);
            if let Err(err) = gate::pass(
                &self.app,
                &self.actor,
                format!("tool:{}", action.tool),
                details,
                self.run_id.clone(),
            )
            .await
            {
                return (Status::Failed(err.to_string()), 0, Ending::Normal);
            }
        }
        let attempts = match action.failure_behavior {
            // Saturating: any u32 is a valid request (regression: `u32::MAX` overflowed).
            Some(Behavior::Retry) => action
                .max_retries
                .unwrap_or(DEFAULT_MAX_RETRIES)
                .saturating_add(1),
            _ => 1,
        };
        let wait = match action.timeout_ms {
            Some(ms) => Duration::from_millis(ms) + TIMEOUT_SLACK,
            None => self.app.config.tool_timeout,
        };
        let mut error = String::new();
        for attempt in 1..=attempts {
            match self.call(action, parameters, attempt, wait).await {
                Ok(output) => return (Status::Succeeded(output), attempt, Ending::Normal),
                Err(CallFailure { message, ending }) => {
                    if ending != Ending::Normal {
                        return (Status::Failed(message), attempt, ending);
                    }
                    error = message;
                }
            }
        }
        (Status::Failed(error), attempts, Ending::Normal)
    }

    /// One `tools.execute` round trip.
    async fn call(
        &self,
        action: &Action,
        parameters: &Value,
        attempt: u32,
        wait: Duration,
    ) -> Result<Value, CallFailure> {
        const GONE: &str = tool_calls::CLIENT_DISCONNECTED;
        if self.calls.is_gone() {
            return Err(GONE.into());
        }
        if let Some(message) = self.cancelled() {
            return Err(CallFailure::cancelled(message));
        }
        let request_id = self.app.new_id();
        let dispatch = Command::DispatchToolCall(DispatchToolCall {
            dispatch: ToolCallDispatched {
                request_id: request_id.clone(),
                client_id: self.client_id.clone(),
                proposal_id: self.proposal_id.clone(),
                action_id: action.id.clone(),
                tool: action.tool.clone(),
                parameters: parameters.clone().into(),
                attempt,
                timeout_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                run_id: self.run_id.clone(),
            },
        });
        let queued = match self.app.submit(dispatch, |_, _| ()).await {
            Ok(queued) => queued,
            Err(err) => return Err(err.to_string().into()),
        };
        // The marker is durable before the call is sent (§14.5); only the benchmark of
        // what that costs sends it as soon as it is queued (`--bench-unmarked-dispatch`).
        if self.app.config.durable_dispatch {
            if let Err(err) = queued.wait().await.and_then(|r| r.map_err(RpcError::from)) {
                return Err(err.to_string().into());
            }
        }
        if let Some(control) = &self.control {
            if let Err(message) = control.begin_call(&action.id, &request_id) {
                // Cancelled while the marker was written: never sent.
                self.finish_call(
                    &request_id,
                    ToolCallOutcome::Cancelled {
                        reason: message.clone(),
                    },
                )
                .await;
                return Err(CallFailure::cancelled(message));
            }
        }
        let reply = self.calls.expect(&request_id);
        let mut params = json!({
            "action_id": action.id,
            "tool": action.tool,
            "parameters": parameters,
            "params": parameters,
            "attempt": attempt,
            "request_id": request_id,
            "session_id": self.client_id,
        });
        if let Some(ms) = action.timeout_ms {
            params["timeout_ms"] = json!(ms);
        }
        let started = Instant::now();
        let sent = self
            .out
            .send(&rpc::request(&request_id, "tools.execute", params))
            .await;
        let outcome = if !sent {
            None
        } else {
            let cancelled = async {
                match &self.control {
                    Some(control) => control.wait_cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                reply = tokio::time::timeout(wait, reply) => {
                    reply.ok().map(|r| r.unwrap_or(ToolReply::Gone(GONE.into())))
                }
                () = cancelled => return Err(self.abandon(action, &request_id).await),
            }
        };
        if let Some(control) = &self.control {
            control.end_call();
        }
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (recorded, result) = match outcome {
            Some(ToolReply::Result(output)) => match output.get("error").and_then(Value::as_str) {
                Some(message) => {
                    let error = message.to_owned();
                    (
                        ToolCallOutcome::Failed {
                            error: error.clone(),
                            elapsed_ms,
                        },
                        Err(error.into()),
                    )
                }
                None => (
                    ToolCallOutcome::Completed {
                        output: output.clone(),
                        elapsed_ms,
                    },
                    Ok(output),
                ),
            },
            Some(ToolReply::Error(error)) => {
                let message = error
                    .get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| error.to_string());
                let ending = if error["data"]["terminal"] == Value::Bool(true) {
                    Ending::Terminal
                } else {
                    Ending::Normal
                };
                (
                    ToolCallOutcome::Failed {
                        error: message.clone(),
                        elapsed_ms,
                    },
                    Err(CallFailure { message, ending }),
                )
            }
            Some(ToolReply::Gone(_)) => {
                self.calls.forget(&request_id);
                (
                    ToolCallOutcome::Cancelled {
                        reason: tool_calls::DISCONNECTED.into(),
                    },
                    Err(GONE.into()),
                )
            }
            None if !sent => {
                self.calls.forget(&request_id);
                (
                    ToolCallOutcome::Cancelled {
                        reason: tool_calls::DISCONNECTED.into(),
                    },
                    Err(GONE.into()),
                )
            }
            None => {
                self.calls.forget(&request_id);
                let message = tool_calls::timeout_message(
                    &action.tool,
                    u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                );
                // The reason is the action's error text, as CAR sends it (clients show it).
                let cancel =
                    json!({"request_id": request_id, "action_id": action.id, "reason": message});
                self.out.notify("tools.cancel", cancel).await;
                let waited = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                (
                    ToolCallOutcome::TimedOut { elapsed_ms: waited },
                    Err(message.into()),
                )
            }
        };
        self.finish_call(&request_id, recorded).await;
        result
    }

    /// Abandons the awaited callback of a cancelled run (§14.1): `tools.cancel` with the
    /// cancellation's text, reported to `runs.cancel` with whether it could be written,
    /// and the call recorded as cancelled.
    async fn abandon(&self, action: &Action, request_id: &str) -> CallFailure {
        self.calls.forget(request_id);
        let message = self.cancelled().unwrap_or_default();
        let cancel = json!({"request_id": request_id, "action_id": action.id, "reason": message});
        let written = self.out.notify("tools.cancel", cancel).await;
        if let Some(control) = &self.control {
            control.abandoned(written);
        }
        self.finish_call(
            request_id,
            ToolCallOutcome::Cancelled {
                reason: message.clone(),
            },
        )
        .await;
        CallFailure::cancelled(message)
    }

    /// Records how a tool call ended.
    async fn finish_call(&self, request_id: &str, outcome: ToolCallOutcome) {
        let finish = Command::FinishToolCall(FinishToolCall {
            request_id: request_id.to_owned(),
            outcome,
        });
        if let Err(err) = self.app.execute(finish, |_, _| ()).await {
            tracing::warn!(%err, "could not record the end of a tool call");
        }
    }

    /// How an action ended, as its event and its entry in the result say it.
    fn outcome(&self, action: &Action, status: &Status, attempts: u32) -> ProposalActionFinished {
        let (name, output, error) = match status {
            Status::Succeeded(output) => ("succeeded", Some(JsonText::from_value(output)), None),
            Status::Failed(error) => ("failed", None, Some(error.clone())),
            Status::Rejected(error) => ("rejected", None, Some(error.clone())),
        };
        ProposalActionFinished {
            proposal_id: self.proposal_id.clone(),
            action_id: action.id.clone(),
            status: name.into(),
            output,
            error,
            attempts,
        }
    }

    /// Records how an action ended (§14.5), and appends it to the session's current run,
    /// as a turn, in the same write.
    async fn record_action(
        &self,
        action: &Action,
        parameters: &Value,
        status: &Status,
        finished: &ProposalActionFinished,
    ) {
        let (output, rejected) = match status {
            Status::Succeeded(output) => (output.clone(), false),
            Status::Failed(error) => (json!(error), false),
            Status::Rejected(error) => (json!(error), true),
        };
        let turn = self.run_id.as_ref().and_then(|run_id| {
            let turn = json!({
                "tool": action.tool,
                "parameters": parameters,
                "output": output,
                "policy_rejected": rejected,
            });
            let turns = AdmittedTurns::admit(&[turn]).ok()?;
            Some(RecordTurns {
                actor: self.actor.clone(),
                run_id: run_id.clone(),
                turns,
            })
        });
        let record = Command::FinishAction(finished.clone(), turn);
        match self.app.execute(record, |_, _| ()).await {
            Ok(Ok(_)) => {}
            Ok(Err(refusal)) => tracing::debug!(%refusal, "proposal action not recorded"),
            Err(err) => tracing::warn!(%err, "proposal action not recorded"),
        }
    }
}

/// Why a `tools.execute` round trip did not give an output.
#[derive(Debug)]
struct CallFailure {
    /// The action's error text.
    message: String,
    /// What else it means for the proposal.
    ending: Ending,
}

impl CallFailure {
    /// The run was cancelled: ``run '<run_id>' cancelled``.
    fn cancelled(message: String) -> Self {
        Self {
            message,
            ending: Ending::Cancelled,
        }
    }
}

impl From<String> for CallFailure {
    fn from(message: String) -> Self {
        Self {
            message,
            ending: Ending::Normal,
        }
    }
}

impl From<&str> for CallFailure {
    fn from(message: &str) -> Self {
        message.to_owned().into()
    }
}

#[derive(Debug, Deserialize)]
struct ResultParams {
    proposal_id: String,
}

/// `proposal.result` (ext, §14.5): the stored `proposal.submit` result plus `state:
/// "completed"`; `{proposal_id, state: "in_progress"}` while it runs; else
/// `{proposal_id, not_found: true}`. Hosts read anyone's; others their principal's.
pub(crate) async fn result(session: &mut Session, params: Value, responder: Responder) {
    let prepared =
        rpc::parse::<ResultParams>(params).and_then(|p| Ok((p, session.actor()?.clone())));
    session.reply_after_writes(responder, prepared, |app, (params, actor)| async move {
        let id = params.proposal_id;
        let caller = (!actor.has_host_rights()).then(|| actor.principal());
        let found = app
            .writer
            .read(|state| {
                let running = state.proposal(&id).is_some_and(|p| {
                    caller
                        .as_deref()
                        .is_none_or(|c| state.principal_of(&p.client_id) == c)
                });
                if running {
                    return Err(());
                }
                Ok(state.proposal_result(caller.as_deref(), &id))
            })
            .await?;
        let seq = match found {
            Err(()) => return Ok(json!({"proposal_id": id, "state": "in_progress"})),
            Ok(None) => return Ok(json!({"proposal_id": id, "not_found": true})),
            Ok(Some(seq)) => seq,
        };
        let mut result = read_result(&app, seq).await?;
        result["state"] = Value::from("completed");
        Ok(result)
    });
}

/// The `proposal.submit` result stored at `seq`.
async fn read_result(app: &App, seq: Seq) -> Result<Value, RpcError> {
    let log = app.writer.log().clone();
    let event = read_blocking(move || log.get(seq)).await?;
    match event.map(|env| env.event) {
        Some(Event::ProposalResultRecorded(recorded)) => Ok(recorded.result.to_value()),
        other => {
            tracing::error!(seq, ?other, "a proposal result's seq holds another event");
            Err(RpcError::Internal(
                "internal error: the event log could not be read".into(),
            ))
        }
    }
}

/// `proposal.submit` on a resumed run (§14.2): the stored result of a proposal made
/// under the run, and nothing runs; any other proposal is refused.
async fn stored_result(
    app: &App,
    run_id: &str,
    proposal_id: Option<&str>,
) -> Result<Value, RpcError> {
    let found = match proposal_id {
        Some(id) => {
            let (run, id) = (run_id.to_owned(), id.to_owned());
            app.writer
                .read(move |state| state.proposal_result_in_run(&run, &id))
                .await?
        }
        None => None,
    };
    match found {
        Some(seq) => read_result(app, seq).await,
        None => Err(RpcError::Internal(format!(
            "run `{run_id}` was resumed: only stored proposal results are returned"
        ))),
    }
}
