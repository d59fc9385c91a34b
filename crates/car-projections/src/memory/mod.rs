//! Memory (PROTOCOL.md §11): facts in scopes, one more projection of the event log.
//!
//! Every change to memory is an event (`memory.fact_added`, `memory.fact_deleted`,
//! `memory.scope_loaded`; `memory.scope_persisted` records a snapshot and changes
//! nothing), so memory survives crashes, replays to the same bytes and can be read at any
//! seq, like runs. This module is the whole of it that is pure:
//!
//! - [`Memory`]: the state slice (every scope's live facts in log order, its minting
//!   counters and its inverted index), folded by [`Memory::apply`] from inside
//!   [`crate::State::apply`];
//! - reads: [`Memory::query`] (BM25 ranking, [`index`]) and [`Memory::build_context`]
//!   ([`context`]), deterministic to the byte;
//! - [`decide`](mod@decide): the commands and their refusals, with the contract's messages,
//!   and the pure halves of `load`/`persist` (file parsing, snapshot rendering, lexical
//!   path checks);
//! - [`scope`]: `shared`, `ns:<namespace>`, `agent:<agent_id>`;
//! - [`text`]: tokens and the stop-word list;
//! - [`labelled`]: the labelled ranking set's figures (MRR, recall@3), for the test and
//!   the bench.
//!
//! Nothing here reads a clock, touches a file or locks: a fact's `created_at` is the time
//! of the envelope that added it.

pub mod context;
pub mod decide;
pub mod index;
pub mod labelled;
pub mod scope;
pub mod text;

use std::collections::BTreeMap;

use car_events::event::Event;
use car_events::{Envelope, Seq};

pub use context::{build_context, context_budget};
pub use decide::{
    AddFact, Consolidate, DeleteFact, LoadScope, LoadedFacts, MemoryRefusal, PathRejection,
    RecordPersist, Snapshot, parse_load_file, resolve_memory_path, snapshot,
};
pub use index::{Fact, Hit, Minter, ScopeMemory, scan_query};
pub use scope::Scope;

/// The most facts `memory.query` returns (`k` is 1–50).
pub const MAX_K: usize = 50;
/// `memory.query`'s `k` when none is given.
pub const DEFAULT_K: usize = 5;
/// The longest `memory.query` query, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// The largest `model_context_window` `memory.build_context` accepts.
pub const MAX_CONTEXT_WINDOW: u64 = 10_000_000;

/// A memory event that cannot follow the events before it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryContradiction {
    /// The scope text is not a scope.
    #[error("memory scope: {0}")]
    Scope(#[from] scope::ScopeError),
    /// A fact id already live in the scope.
    #[error("fact `{fact_id}` is already live in scope `{scope}`")]
    DuplicateFact {
        /// The scope.
        scope: String,
        /// The fact.
        fact_id: String,
    },
    /// A deletion of a fact that is not live.
    #[error("fact `{fact_id}` is not live in scope `{scope}`")]
    UnknownFact {
        /// The scope.
        scope: String,
        /// The fact.
        fact_id: String,
    },
}

/// Every memory scope: the memory slice of [`crate::State`].
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// By scope text (`shared`, `ns:…`, `agent:…`). A scope, once written, stays (empty
    /// or not): its minting counters live on.
    scopes: BTreeMap<String, ScopeMemory>,
}

impl Memory {
    /// No memory at all.
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds one memory event (other events are ignored). On error nothing changed.
    pub fn apply(&mut self, env: &Envelope) -> Result<(), MemoryContradiction> {
        let (seq, ts): (Seq, _) = (env.seq, env.ts);
        match &env.event {
            Event::MemoryFactAdded(e) => {
                Scope::parse(&e.scope)?;
                let scope = self.scopes.entry(e.scope.clone()).or_default();
                if scope.contains(&e.fact.fact_id) {
                    return Err(MemoryContradiction::DuplicateFact {
                        scope: e.scope.clone(),
                        fact_id: e.fact.fact_id.clone(),
                    });
                }
                scope.insert(Fact::from_event(&e.fact, seq, ts));
            }
            Event::MemoryFactDeleted(e) => {
                let removed = self
                    .scopes
                    .get_mut(&e.scope)
                    .and_then(|scope| scope.remove(&e.fact_id));
                if removed.is_none() {
                    return Err(MemoryContradiction::UnknownFact {
                        scope: e.scope.clone(),
                        fact_id: e.fact_id.clone(),
                    });
                }
            }
            Event::MemoryScopeLoaded(e) => {
                Scope::parse(&e.scope)?;
                let mut ids = std::collections::HashSet::with_capacity(e.facts.len());
                if let Some(dup) = e.facts.iter().find(|f| !ids.insert(f.fact_id.as_str())) {
                    return Err(MemoryContradiction::DuplicateFact {
                        scope: e.scope.clone(),
                        fact_id: dup.fact_id.clone(),
                    });
                }
                self.scopes
                    .entry(e.scope.clone())
                    .or_default()
                    .replace(e.facts.iter().map(|f| Fact::from_event(f, seq, ts)));
            }
            Event::MemoryScopePersisted(e) => {
                Scope::parse(&e.scope)?;
            }
            _ => {}
        }
        Ok(())
    }

    /// A scope's facts and index, if it was ever written.
    pub fn scope(&self, scope: &Scope) -> Option<&ScopeMemory> {
        self.scopes.get(&scope.as_key())
    }

    /// Every scope ever written, by scope text.
    pub fn scopes(&self) -> impl Iterator<Item = (&str, &ScopeMemory)> {
        self.scopes.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// How many facts are live in `scope` (`memory.fact_count`).
    pub fn fact_count(&self, scope: &Scope) -> usize {
        self.scope(scope).map_or(0, ScopeMemory::len)
    }

    /// A live fact.
    pub fn fact(&self, scope: &Scope, fact_id: &str) -> Option<&Fact> {
        self.scope(scope)?.get(fact_id)
    }

    /// `scope`'s live facts in log order.
    pub fn facts(&self, scope: &Scope) -> impl DoubleEndedIterator<Item = &Fact> + '_ {
        self.scope(scope).into_iter().flat_map(ScopeMemory::facts)
    }

    /// `memory.query`: the `k` facts of `scope` best matching `query`, best first.
    pub fn query(&self, scope: &Scope, query: &str, k: usize) -> Vec<Hit<'_>> {
        self.scope(scope)
            .map_or_else(Vec::new, |s| s.query(query, k))
    }

    /// `memory.build_context`: `scope`'s facts as prompt sections for `query`.
    pub fn build_context(
        &self,
        scope: &Scope,
        query: &str,
        model_context_window: Option<u64>,
    ) -> String {
        match self.scope(scope) {
            Some(s) => build_context(s, query, model_context_window),
            None => String::new(),
        }
    }
}
