//! One scope's live facts, in log order, with the inverted index that ranks them.
//!
//! The index is kept incrementally: adding a fact tokenises it once and adds one posting
//! per distinct term; deleting it tokenises it again and removes exactly those postings
//! (no tombstones, so the index is at every moment the one a rebuild from scratch would
//! give — [`ScopeMemory::index_snapshot`] lets the tests check that). A query then costs
//! O(the postings of its terms), not a scan of the scope.
//!
//! Facts live in slots (a `Vec` with a free list) so that a posting is two `u32`s and a
//! score accumulator is a dense array; log order is a separate ordinal, never reused.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use car_events::event::MemoryFact;
use car_events::{Seq, format_ts};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::text::{for_each_fact_token, query_terms};

/// BM25's term-frequency saturation (the contract's reference value).
pub const K1: f64 = 1.2;
/// BM25's length normalisation (the contract's reference value).
pub const B: f64 = 0.75;
/// How deep the labelled-set evaluation looks for a relevant fact (`memory.query`'s
/// largest `k`).
pub const MAX_K_FOR_EVAL: usize = 50;

/// A live fact (PROTOCOL.md §11.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact {
    /// Its id within the scope.
    pub fact_id: String,
    /// What it is about.
    pub subject: String,
    /// The fact.
    pub body: String,
    /// Its kind.
    pub kind: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Who contributed it.
    pub source: String,
    /// When it was added (or loaded): the time of its event.
    pub created_at: DateTime<Utc>,
    /// Its event.
    pub seq: Seq,
}

impl Fact {
    /// A fact as an event records it, added at `seq` and `ts`.
    pub fn from_event(fact: &MemoryFact, seq: Seq, ts: DateTime<Utc>) -> Fact {
        Fact {
            fact_id: fact.fact_id.clone(),
            subject: fact.subject.clone(),
            body: fact.body.clone(),
            kind: fact.kind.clone(),
            tags: fact.tags.clone(),
            source: fact.source.clone(),
            created_at: ts,
            seq,
        }
    }

    /// The persisted shape: `{fact_id, subject, body, kind, tags, source, created_at}`.
    pub fn to_json(&self) -> Value {
        json!({
            "fact_id": self.fact_id,
            "subject": self.subject,
            "body": self.body,
            "kind": self.kind,
            "tags": self.tags,
            "source": self.source,
            "created_at": format_ts(self.created_at),
        })
    }
}

/// Which daemon-minted id family a fact id without one gets (PROTOCOL.md §11.2, §16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Minter {
    /// `ws-<n>`: `memory.add_fact` over the WebSocket.
    Ws,
    /// `mcp-<n>`: MCP's `memory_add_fact`.
    Mcp,
}

impl Minter {
    const ALL: [Minter; 2] = [Minter::Ws, Minter::Mcp];

    /// The id prefix, without its `-`.
    pub fn prefix(self) -> &'static str {
        match self {
            Minter::Ws => "ws",
            Minter::Mcp => "mcp",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// `n` if `id` is `<prefix>-<n>` with `n` in canonical decimal (no sign, no leading 0).
    fn number(self, id: &str) -> Option<u64> {
        let digits = id.strip_prefix(self.prefix())?.strip_prefix('-')?;
        if digits.is_empty()
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        digits.parse().ok()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    fact: Fact,
    /// Log order within the scope (never reused).
    ord: u64,
    /// Token count of the fact's text (BM25's document length).
    len: u32,
}

/// What scoring reads per posting, kept dense by slot (16 bytes) so that walking a long
/// postings list touches a small array, not the facts themselves.
#[derive(Debug, Clone, Copy, Default)]
struct Doc {
    /// [`Entry::ord`].
    ord: u64,
    /// [`Entry::len`].
    len: u32,
    /// Whether the fact's kind has a context section of its own.
    section: bool,
}

/// One ranked fact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit<'a> {
    /// The fact.
    pub fact: &'a Fact,
    /// Its BM25 score (> 0).
    pub score: f64,
}

impl Hit<'_> {
    /// `s / (s + 1)`, rounded to 6 decimals (PROTOCOL.md §11.2).
    pub fn confidence(&self) -> f64 {
        (self.score / (self.score + 1.0) * 1e6).round() / 1e6
    }

    /// The wire shape of `memory.query`: `{fact_id, subject, body, kind, confidence, tags,
    /// source}`.
    pub fn to_json(&self) -> Value {
        let f = self.fact;
        json!({
            "fact_id": f.fact_id,
            "subject": f.subject,
            "body": f.body,
            "kind": f.kind,
            "confidence": self.confidence(),
            "tags": f.tags,
            "source": f.source,
        })
    }
}

/// One BM25 term contribution: Okapi BM25 with the always-positive idf
/// `ln(1 + (N − df + 0.5) / (df + 0.5))` (Lucene's), so that a term in most facts still
/// adds a little instead of subtracting. Shared by the index and [`scan_query`], so both
/// compute the same bits.
fn term_score(n: f64, df: f64, tf: f64, dl: f64, avgdl: f64) -> f64 {
    let idf = ((n - df + 0.5) / (df + 0.5)).ln_1p();
    idf * (tf * (K1 + 1.0)) / (tf + K1 * (1.0 - B + B * dl / avgdl))
}

/// The ranking order: score descending, then newer first (larger `ord`), then `fact_id`.
fn rank(a: (f64, u64, &str), b: (f64, u64, &str)) -> Ordering {
    b.0.total_cmp(&a.0)
        .then(b.1.cmp(&a.1))
        .then_with(|| a.2.cmp(b.2))
}

/// The index as plain data, for comparing an incrementally kept index with a rebuilt one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSnapshot {
    /// term → fact id → term frequency.
    pub postings: BTreeMap<String, BTreeMap<String, u32>>,
    /// fact id → document length.
    pub lengths: BTreeMap<String, u32>,
    /// Sum of the document lengths.
    pub total_len: u64,
    /// Fact ids by kind, in log order.
    pub kinds: BTreeMap<String, Vec<String>>,
}

/// BM25 scores of one query: a dense accumulator by slot and the slots it touched.
#[derive(Debug)]
pub(crate) struct Scores {
    acc: Vec<f64>,
    touched: Vec<u32>,
}

impl Scores {
    /// `(slot, score)` of every matching fact.
    fn iter(&self) -> impl Iterator<Item = (u32, f64)> + '_ {
        self.touched
            .iter()
            .map(|&slot| (slot, self.acc[slot as usize]))
    }

    /// A slot's score (0: it matches nothing).
    pub(crate) fn get(&self, slot: u32) -> f64 {
        self.acc.get(slot as usize).copied().unwrap_or(0.0)
    }
}

/// A scope's live facts and their index.
#[derive(Debug, Clone, Default)]
pub struct ScopeMemory {
    slots: Vec<Option<Entry>>,
    /// Per slot, what scoring reads (stale for a free slot: no posting names it).
    docs: Vec<Doc>,
    free: Vec<u32>,
    by_id: HashMap<String, u32>,
    /// ord → slot: log order.
    order: BTreeMap<u64, u32>,
    next_ord: u64,
    /// kind → ords, for the context sections picked by kind.
    by_kind: HashMap<String, BTreeSet<u64>>,
    /// term → slot → term frequency.
    postings: HashMap<Box<str>, HashMap<u32, u32>>,
    total_len: u64,
    /// The highest `<prefix>-<n>` ever live in the scope, per [`Minter`] (0: none).
    minted: [u64; 2],
}

impl ScopeMemory {
    /// An empty scope.
    pub fn new() -> Self {
        Self::default()
    }

    /// A scope holding `facts`, in this order (the rebuild the tests compare with).
    pub fn from_facts<'a>(facts: impl IntoIterator<Item = &'a Fact>) -> Self {
        let mut scope = Self::new();
        for fact in facts {
            scope.insert(fact.clone());
        }
        scope
    }

    /// How many facts are live.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no fact is live.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// A live fact.
    pub fn get(&self, fact_id: &str) -> Option<&Fact> {
        self.by_id.get(fact_id).map(|&slot| &self.entry(slot).fact)
    }

    /// Whether `fact_id` is live.
    pub fn contains(&self, fact_id: &str) -> bool {
        self.by_id.contains_key(fact_id)
    }

    /// The live facts in log order.
    pub fn facts(&self) -> impl DoubleEndedIterator<Item = &Fact> + '_ {
        self.order.values().map(|&slot| &self.entry(slot).fact)
    }

    /// The live facts of `kind`, oldest first.
    pub fn facts_of_kind<'a>(
        &'a self,
        kind: &str,
    ) -> impl DoubleEndedIterator<Item = &'a Fact> + 'a {
        self.by_kind
            .get(kind)
            .into_iter()
            .flatten()
            .filter_map(|ord| self.order.get(ord))
            .map(|&slot| &self.entry(slot).fact)
    }

    /// The highest `<prefix>-<n>` id live at any time in this scope (0: none).
    pub fn minted(&self, minter: Minter) -> u64 {
        self.minted[minter.index()]
    }

    /// The id the next fact without one gets: `<prefix>-<n>` from the scope's counter,
    /// skipping ids in use. The counter only grows (a fact adding `ws-7` moves it past 7),
    /// so an id once live is never minted again for another fact, even after a delete or
    /// a load.
    pub fn mint(&self, minter: Minter) -> String {
        let mut n = self.minted(minter).saturating_add(1);
        loop {
            let id = format!("{}-{n}", minter.prefix());
            if !self.contains(&id) || n == u64::MAX {
                return id;
            }
            n += 1;
        }
    }

    fn entry(&self, slot: u32) -> &Entry {
        match self.slots.get(slot as usize) {
            Some(Some(entry)) => entry,
            // The maps only ever name occupied slots.
            _ => unreachable!("slot {slot} is not occupied"),
        }
    }

    /// Adds a fact after the others. The caller has checked that its id is not live.
    pub(crate) fn insert(&mut self, fact: Fact) {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                self.docs.push(Doc::default());
                (self.slots.len() - 1) as u32
            }
        };
        let mut tfs: HashMap<String, u32> = HashMap::new();
        let mut len = 0u32;
        for_each_fact_token(&fact.subject, &fact.body, |t| {
            len += 1;
            *tfs.entry(t.into_owned()).or_default() += 1;
        });
        for (term, tf) in tfs {
            self.postings
                .entry(term.into_boxed_str())
                .or_default()
                .insert(slot, tf);
        }
        for minter in Minter::ALL {
            if let Some(n) = minter.number(&fact.fact_id) {
                let seen = &mut self.minted[minter.index()];
                *seen = (*seen).max(n);
            }
        }
        let ord = self.next_ord;
        self.next_ord += 1;
        self.total_len += u64::from(len);
        self.order.insert(ord, slot);
        self.by_kind
            .entry(fact.kind.clone())
            .or_default()
            .insert(ord);
        self.by_id.insert(fact.fact_id.clone(), slot);
        self.docs[slot as usize] = Doc {
            ord,
            len,
            section: super::context::is_section_kind(&fact.kind),
        };
        self.slots[slot as usize] = Some(Entry { fact, ord, len });
    }

    /// Removes a live fact.
    pub(crate) fn remove(&mut self, fact_id: &str) -> Option<Fact> {
        let slot = self.by_id.remove(fact_id)?;
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        self.free.push(slot);
        let postings = &mut self.postings;
        for_each_fact_token(&entry.fact.subject, &entry.fact.body, |t| {
            if let Some(list) = postings.get_mut(t.as_ref()) {
                list.remove(&slot);
                if list.is_empty() {
                    postings.remove(t.as_ref());
                }
            }
        });
        self.total_len -= u64::from(entry.len);
        self.order.remove(&entry.ord);
        if let Some(ords) = self.by_kind.get_mut(&entry.fact.kind) {
            ords.remove(&entry.ord);
            if ords.is_empty() {
                self.by_kind.remove(&entry.fact.kind);
            }
        }
        Some(entry.fact)
    }

    /// Replaces every fact with `facts`, in order (`memory.load`). The minting counters
    /// stay: they only grow.
    pub(crate) fn replace(&mut self, facts: impl IntoIterator<Item = Fact>) {
        let minted = self.minted;
        *self = Self::default();
        self.minted = minted;
        for fact in facts {
            self.insert(fact);
        }
    }

    /// Whether any live fact contains `term`.
    pub fn has_term(&self, term: &str) -> bool {
        self.postings.contains_key(term)
    }

    /// The BM25 score of every fact matching at least one of `terms` (distinct): a dense
    /// accumulator by slot and the slots it touched, in no particular order. Costs
    /// O(the postings of `terms`) plus one zeroed accumulator per slot.
    fn scores(&self, terms: &[String]) -> Scores {
        let n = self.len();
        let mut scores = Scores {
            acc: Vec::new(),
            touched: Vec::new(),
        };
        if n == 0 {
            return scores;
        }
        scores.acc = vec![0.0f64; self.slots.len()];
        let avgdl = self.total_len as f64 / n as f64;
        for term in terms {
            let Some(list) = self.postings.get(term.as_str()) else {
                continue;
            };
            let df = list.len() as f64;
            for (&slot, &tf) in list {
                let dl = f64::from(self.docs[slot as usize].len);
                let s = term_score(n as f64, df, f64::from(tf), dl, avgdl);
                let cell = &mut scores.acc[slot as usize];
                if *cell == 0.0 {
                    scores.touched.push(slot);
                }
                *cell += s;
            }
        }
        scores
    }

    /// The ranking order over slots: score descending, then newer first. Ords are unique
    /// within a scope, so `fact_id`, the contract's last tie-break, never decides here.
    fn cmp_slots(&self, a: (u32, f64), b: (u32, f64)) -> Ordering {
        b.1.total_cmp(&a.1).then(
            self.docs[b.0 as usize]
                .ord
                .cmp(&self.docs[a.0 as usize].ord),
        )
    }

    /// The best `keep` of `scored`, best first.
    fn best(&self, scored: impl Iterator<Item = (u32, f64)>, keep: usize) -> Vec<(u32, f64)> {
        if keep == 0 {
            return Vec::new();
        }
        if keep <= 64 {
            // A sorted window of the best so far: each candidate is compared with the worst
            // kept one, and only better ones (rare once the window fills) are inserted.
            let mut top: Vec<(u32, f64)> = Vec::with_capacity(keep + 1);
            for c in scored {
                if top.len() == keep && self.cmp_slots(c, top[keep - 1]) != Ordering::Less {
                    continue;
                }
                let at = top.partition_point(|t| self.cmp_slots(*t, c) == Ordering::Less);
                top.insert(at, c);
                top.truncate(keep);
            }
            return top;
        }
        let mut all: Vec<(u32, f64)> = scored.collect();
        let cmp = |a: &(u32, f64), b: &(u32, f64)| self.cmp_slots(*a, *b);
        if all.len() > keep {
            all.select_nth_unstable_by(keep - 1, cmp);
            all.truncate(keep);
        }
        all.sort_unstable_by(cmp);
        all
    }

    /// The `k` facts best matching `query`, best first (PROTOCOL.md §11.2).
    pub fn query(&self, query: &str, k: usize) -> Vec<Hit<'_>> {
        let terms = query_terms(query);
        let scores = self.scores(&terms);
        self.best(scores.iter(), k)
            .into_iter()
            .map(|(slot, score)| Hit {
                fact: &self.entry(slot).fact,
                score,
            })
            .collect()
    }

    /// For `build_context`: the best `cap` facts matching `terms` whose kind has no
    /// section of its own, best first, and the scores of every fact.
    pub(crate) fn ranked_for_context<'a>(
        &'a self,
        terms: &[String],
        cap: usize,
    ) -> (Vec<Hit<'a>>, Scores) {
        let scores = self.scores(terms);
        let others = self
            .best(
                scores
                    .iter()
                    .filter(|(slot, _)| !self.docs[*slot as usize].section),
                cap,
            )
            .into_iter()
            .map(|(slot, score)| Hit {
                fact: &self.entry(slot).fact,
                score,
            })
            .collect();
        (others, scores)
    }

    /// The facts of `kind` with their scores (0 when they match nothing), least relevant
    /// first: the reverse of the ranking order.
    pub(crate) fn kind_least_relevant_first<'a>(
        &'a self,
        kind: &str,
        scores: &Scores,
    ) -> Vec<&'a Fact> {
        let mut all: Vec<(u32, f64)> = self
            .by_kind
            .get(kind)
            .into_iter()
            .flatten()
            .filter_map(|ord| self.order.get(ord))
            .map(|&slot| (slot, scores.get(slot)))
            .collect();
        all.sort_unstable_by(|a, b| self.cmp_slots(*b, *a));
        all.into_iter()
            .map(|(slot, _)| &self.entry(slot).fact)
            .collect()
    }

    /// The index as plain data (for tests).
    pub fn index_snapshot(&self) -> IndexSnapshot {
        let id = |slot: &u32| self.entry(*slot).fact.fact_id.clone();
        IndexSnapshot {
            postings: self
                .postings
                .iter()
                .map(|(term, list)| {
                    (
                        term.to_string(),
                        list.iter().map(|(slot, tf)| (id(slot), *tf)).collect(),
                    )
                })
                .collect(),
            lengths: self
                .by_id
                .iter()
                .map(|(fact_id, slot)| (fact_id.clone(), self.entry(*slot).len))
                .collect(),
            total_len: self.total_len,
            kinds: self
                .by_kind
                .iter()
                .map(|(kind, ords)| {
                    (
                        kind.clone(),
                        ords.iter()
                            .filter_map(|ord| self.order.get(ord))
                            .map(id)
                            .collect(),
                    )
                })
                .collect(),
        }
    }
}

/// The reference ranking, by scanning: BM25 over `facts` (log order) computed by
/// tokenising every fact for this one query, as a daemon without an index would. The
/// index must give exactly its results (a property test checks it), and the benchmark
/// measures the index against it.
pub fn scan_query<'a>(facts: &[&'a Fact], query: &str, k: usize) -> Vec<Hit<'a>> {
    let terms = query_terms(query);
    let mut df = vec![0u64; terms.len()];
    let mut total_len = 0u64;
    let mut docs: Vec<(u32, Vec<u32>)> = Vec::with_capacity(facts.len());
    for fact in facts {
        let mut tfs = vec![0u32; terms.len()];
        let mut len = 0u32;
        for_each_fact_token(&fact.subject, &fact.body, |t| {
            len += 1;
            if let Some(i) = terms.iter().position(|term| *term == *t) {
                tfs[i] += 1;
            }
        });
        for (i, tf) in tfs.iter().enumerate() {
            if *tf > 0 {
                df[i] += 1;
            }
        }
        total_len += u64::from(len);
        docs.push((len, tfs));
    }
    let n = facts.len() as f64;
    let avgdl = total_len as f64 / n;
    let mut scored: Vec<(usize, f64)> = Vec::new();
    for (pos, (len, tfs)) in docs.iter().enumerate() {
        let mut score = 0.0;
        let mut matched = false;
        for (i, tf) in tfs.iter().enumerate() {
            if *tf > 0 {
                matched = true;
                score += term_score(n, df[i] as f64, f64::from(*tf), f64::from(*len), avgdl);
            }
        }
        if matched {
            scored.push((pos, score));
        }
    }
    let key = |(pos, score): (usize, f64)| (score, pos as u64, facts[pos].fact_id.as_str());
    scored.sort_unstable_by(|a, b| rank(key(*a), key(*b)));
    scored.truncate(k);
    scored
        .into_iter()
        .map(|(pos, score)| Hit {
            fact: facts[pos],
            score,
        })
        .collect()
}
