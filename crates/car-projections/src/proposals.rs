//! Proposals (PROTOCOL.md §4.2, §14.5): a session submits actions (`proposal.submit`), the
//! daemon carries them out one by one (each through a tool call), records each action's
//! end, then the proposal's result, then its end.
//!
//! The whole aggregate in one place: its slice of the state (`Proposals`: the proposals
//! in progress, and where each finished proposal's result is in the log), its fold
//! (`proposal.submitted`, `proposal.action_finished`, `proposal.result_recorded`,
//! `proposal.finished`) and its decisions (the `SubmitProposal`, `FinishAction`,
//! `CompleteProposal` and `FinishProposal` commands). The result itself is built by
//! [`crate::proposal_result`]; the calls an action makes are [`crate::tool_calls`]. Every
//! proposal event except its result is indexed under the proposal's run, when that run is
//! retained. The fold runs from inside [`State::apply`], the decisions from inside
//! [`crate::decide()`].

use std::collections::BTreeMap;

use car_events::event::{
    Event, ProposalActionFinished, ProposalFinished, ProposalResultRecorded, ProposalSubmitted,
    ToolCallDispatched,
};
use car_events::{Envelope, Seq};

use crate::decide::{RecordTurns, Refusal};
use crate::state::{Contradiction, State};

/// A proposal being carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Its id.
    pub proposal_id: String,
    /// The submitting session.
    pub client_id: String,
    /// The run its actions are recorded in.
    pub run_id: Option<String>,
    /// Its `proposal.submitted` event.
    pub submitted_seq: Seq,
    /// Its actions, in order.
    pub action_ids: Vec<String>,
    /// The actions that ended so far, in order, with the seq of their event (§14.5).
    pub finished: Vec<(ProposalActionFinished, Seq)>,
    /// The last of its tool calls that ended: its marker and its outcome event. A crash
    /// between a call's outcome and its action's outcome (or the next attempt's marker)
    /// leaves only this to say what the action did.
    pub last_call: Option<(ToolCallDispatched, Event)>,
}

/// The proposals slice of the state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Proposals {
    /// The proposals in progress, by id.
    proposals: BTreeMap<String, Proposal>,
    /// Where each proposal's final result is in the log, by (proposal id, principal): the
    /// latest result of a reused id (`proposal.result` reads it back from the log).
    results: BTreeMap<(String, String), Seq>,
    /// The same, by (run id, proposal id), for proposals made under a run: what
    /// `proposal.submit` answers on a resumed run (§14.2).
    results_by_run: BTreeMap<(String, String), Seq>,
}

impl Proposals {
    /// Folds a `proposal.*` event (other events are not this slice's), handing `relate`
    /// the run the event belongs to. On error the slice is unchanged and `relate` is not
    /// called.
    pub(crate) fn apply(
        &mut self,
        env: &Envelope,
        relate: impl FnOnce(Option<&str>),
    ) -> Result<(), Contradiction> {
        let seq = env.seq;
        match &env.event {
            Event::ProposalSubmitted(e) => {
                if self.proposals.contains_key(&e.proposal_id) {
                    return Err(Contradiction::DuplicateProposal(e.proposal_id.clone()));
                }
                relate(e.run_id.as_deref());
                self.proposals.insert(
                    e.proposal_id.clone(),
                    Proposal {
                        proposal_id: e.proposal_id.clone(),
                        client_id: e.client_id.clone(),
                        run_id: e.run_id.clone(),
                        submitted_seq: seq,
                        action_ids: e.action_ids.clone(),
                        finished: Vec::new(),
                        last_call: None,
                    },
                );
            }
            Event::ProposalActionFinished(e) => {
                let Some(proposal) = self.proposals.get_mut(&e.proposal_id) else {
                    return Err(Contradiction::UnknownProposal(e.proposal_id.clone()));
                };
                // At most one outcome per action, and only for its own actions (§14.5).
                if !proposal.action_ids.contains(&e.action_id)
                    || proposal
                        .finished
                        .iter()
                        .any(|(f, _)| f.action_id == e.action_id)
                {
                    return Err(Contradiction::ActionOutcome {
                        proposal_id: e.proposal_id.clone(),
                        action_id: e.action_id.clone(),
                    });
                }
                proposal.finished.push((e.clone(), seq));
                relate(proposal.run_id.as_deref());
            }
            Event::ProposalFinished(e) => {
                let Some(proposal) = self.proposals.remove(&e.proposal_id) else {
                    return Err(Contradiction::UnknownProposal(e.proposal_id.clone()));
                };
                relate(proposal.run_id.as_deref());
            }
            Event::ProposalResultRecorded(e) => {
                let Some(proposal) = self.proposals.get(&e.proposal_id) else {
                    return Err(Contradiction::UnknownProposal(e.proposal_id.clone()));
                };
                if let Some(run_id) = &proposal.run_id {
                    self.results_by_run
                        .insert((run_id.clone(), e.proposal_id.clone()), seq);
                }
                self.results
                    .insert((e.proposal_id.clone(), e.principal.clone()), seq);
            }
            _ => {}
        }
        Ok(())
    }

    /// Notes that a tool call of a proposal in progress ended with `outcome`.
    pub(crate) fn call_ended(&mut self, dispatch: &ToolCallDispatched, outcome: &Event) {
        if let Some(proposal) = self.proposals.get_mut(&dispatch.proposal_id) {
            proposal.last_call = Some((dispatch.clone(), outcome.clone()));
        }
    }

    /// A proposal in progress.
    pub(crate) fn get(&self, id: &str) -> Option<&Proposal> {
        self.proposals.get(id)
    }

    /// Every proposal in progress, by id.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Proposal> {
        self.proposals.values()
    }

    /// The seq of the latest result of proposal `id` that `principal` made; for `None`,
    /// the latest of anyone's.
    pub(crate) fn result(&self, principal: Option<&str>, id: &str) -> Option<Seq> {
        match principal {
            Some(principal) => self
                .results
                .get(&(id.to_owned(), principal.to_owned()))
                .copied(),
            None => self
                .results
                .range((id.to_owned(), String::new())..)
                .take_while(|((pid, _), _)| pid == id)
                .map(|(_, seq)| *seq)
                .max(),
        }
    }

    /// The seq of the latest result of proposal `id` made under run `run_id`.
    pub(crate) fn result_in_run(&self, run_id: &str, id: &str) -> Option<Seq> {
        self.results_by_run
            .get(&(run_id.to_owned(), id.to_owned()))
            .copied()
    }

    /// Every stored result: `(proposal id, principal, seq)`, by id.
    pub(crate) fn results(&self) -> impl Iterator<Item = (&str, &str, Seq)> {
        self.results
            .iter()
            .map(|((id, principal), seq)| (id.as_str(), principal.as_str(), *seq))
    }
}

/// `proposal.submit` accepted: refused while a proposal with its id is in progress.
pub(crate) fn submit_proposal(state: &State, c: &ProposalSubmitted) -> Result<Vec<Event>, Refusal> {
    if state.proposal(&c.proposal_id).is_some() {
        return Err(Refusal::InvalidParams(format!(
            "proposal.id: proposal `{}` is already in progress",
            c.proposal_id
        )));
    }
    if let Some(run) = c.run_id.as_deref().and_then(|id| state.run(id)) {
        if run.quarantined {
            return Err(Refusal::Quarantined(run.run_id.clone()));
        }
    }
    Ok(vec![Event::ProposalSubmitted(c.clone())])
}

/// One action ended, with its turn in the proposal's run when the run takes it; nothing
/// when the proposal is no longer in progress.
pub(crate) fn finish_action(
    state: &State,
    finished: &ProposalActionFinished,
    turn: Option<&RecordTurns>,
) -> Vec<Event> {
    if state.proposal(&finished.proposal_id).is_none() {
        return vec![];
    }
    let mut events = vec![Event::ProposalActionFinished(finished.clone())];
    if let Some(turn) = turn {
        events.extend(crate::runs::decide::record_turns(state, turn).unwrap_or_default());
    }
    events
}

/// The proposal's result, then its end; nothing when it is no longer in progress.
pub(crate) fn complete_proposal(
    state: &State,
    finished: &ProposalFinished,
    result: &ProposalResultRecorded,
) -> Vec<Event> {
    if state.proposal(&finished.proposal_id).is_some() {
        vec![
            Event::ProposalResultRecorded(result.clone()),
            Event::ProposalFinished(finished.clone()),
        ]
    } else {
        vec![]
    }
}

/// The proposal's end; nothing when it is no longer in progress.
pub(crate) fn finish_proposal(state: &State, c: &ProposalFinished) -> Vec<Event> {
    if state.proposal(&c.proposal_id).is_some() {
        vec![Event::ProposalFinished(c.clone())]
    } else {
        vec![]
    }
}
