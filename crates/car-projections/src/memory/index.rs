//! One scope's live facts, in log order, with the inverted index that ranks them.
//!
//! The index is kept incrementally: adding a fact tokenises it once and appends one
//! posting per distinct term; deleting it tokenises it again and turns exactly those
//! postings into tombstones, which go when their list or the scope is compacted. The
//! index is at every moment, tombstones aside, the one a rebuild from scratch would give
//! ([`ScopeMemory::index_snapshot`] and [`ScopeMemory::check_invariants`] let the tests
//! check that). A query then costs O(the postings of its terms), not a scan of the scope.
//!
//! Facts live in slots handed out in log order, so that a posting is two `u32`s, a
//! postings list sorted by slot is walked sequentially, and a score accumulator is a dense
//! array (one per thread, reused across queries).
use std::cell::Cell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

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
    /// Token count of the fact's text (BM25's document length).
    len: u32,
}

/// One posting: a slot and the term's frequency in its fact. `tf == 0` is a tombstone (the
/// fact was deleted; the entry goes at the list's next compaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Posting {
    slot: u32,
    tf: u32,
}

/// One term's postings.
#[derive(Debug, Clone, Default)]
struct Postings {
    /// By strictly increasing slot (so by log order), tombstones included.
    list: Vec<Posting>,
    /// How many entries are not tombstones: the term's document frequency.
    live: u32,
}

impl Postings {
    fn dead(&self) -> usize {
        self.list.len() - self.live as usize
    }
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

// One BM25 term contribution is `weight(idf(N, df), tf, length_norm(dl, avgdl))`: Okapi
// BM25 with the always-positive idf `ln(1 + (N − df + 0.5) / (df + 0.5))` (Lucene's), so
// that a term in most facts still adds a little instead of subtracting. The three pieces
// are shared by the index (which computes `idf` once per term and `length_norm` once per
// document length) and [`scan_query`] (which composes them per posting), so both compute
// the same bits: IEEE arithmetic without fast-math is deterministic for the same
// operations on the same operands.

/// BM25's idf of a term in `df` of `n` facts.
fn idf(n: f64, df: f64) -> f64 {
    ((n - df + 0.5) / (df + 0.5)).ln_1p()
}

/// BM25's length normalisation of a fact of `dl` tokens: `k1 (1 − b + b dl / avgdl)`.
fn length_norm(dl: f64, avgdl: f64) -> f64 {
    K1 * (1.0 - B + B * dl / avgdl)
}

/// One term's contribution to a fact's score.
fn weight(idf: f64, tf: f64, norm: f64) -> f64 {
    idf * (tf * (K1 + 1.0)) / (tf + norm)
}

/// One BM25 term contribution, composed from the pieces above.
fn term_score(n: f64, df: f64, tf: f64, dl: f64, avgdl: f64) -> f64 {
    weight(idf(n, df), tf, length_norm(dl, avgdl))
}

/// The ranking order: score descending, then newer first (larger `ord`), then `fact_id`.
fn rank(a: (f64, u64, &str), b: (f64, u64, &str)) -> Ordering {
    b.0.total_cmp(&a.0)
        .then(b.1.cmp(&a.1))
        .then_with(|| a.2.cmp(b.2))
}

/// A scored slot, ordered by the ranking: greater is better (higher score, then newer, that
/// is a larger slot). Slots are unique and in log order, so `fact_id`, the contract's last
/// tie-break, never decides within a scope.
#[derive(Debug, Clone, Copy)]
struct Cand {
    score: f64,
    slot: u32,
}

impl PartialEq for Cand {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Cand {}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then(self.slot.cmp(&other.slot))
    }
}

/// The best `keep` of `cands`, best first: a heap of the best so far whose worst is
/// compared with each candidate (only better ones, rare once it is full, go in).
fn best(cands: impl Iterator<Item = Cand>, keep: usize) -> Vec<Cand> {
    if keep == 0 {
        return Vec::new();
    }
    let mut heap: BinaryHeap<Reverse<Cand>> = BinaryHeap::with_capacity(keep.min(1024));
    // The worst kept score once the heap is full: most candidates lose to it on the score
    // alone.
    let mut bar = f64::NEG_INFINITY;
    for c in cands {
        if c.score < bar {
            continue;
        }
        if heap.len() < keep {
            heap.push(Reverse(c));
        } else if let Some(mut worst) = heap.peek_mut()
            && c > worst.0
        {
            *worst = Reverse(c);
        }
        if heap.len() == keep
            && let Some(worst) = heap.peek()
        {
            bar = worst.0.score;
        }
    }
    // Ascending `Reverse<Cand>` is descending `Cand`: best first.
    heap.into_sorted_vec().into_iter().map(|r| r.0).collect()
}

/// Per-thread scratch for scoring: a dense accumulator by slot, all zeros between queries,
/// and the slots a query touched (the ones to zero again). Kept per thread so that a query
/// allocates nothing proportional to the scope while [`ScopeMemory`] stays a plain `Sync`
/// value read through `&self`; it grows to the largest scope queried on the thread.
#[derive(Debug, Default)]
struct Scratch {
    acc: Vec<f64>,
    /// One longer than `acc`; the first `touched_len` are the touched slots.
    touched: Vec<u32>,
    touched_len: usize,
}

impl Scratch {
    /// The touched slots with their scores.
    fn cands(&self) -> impl Iterator<Item = Cand> + '_ {
        self.touched[..self.touched_len].iter().map(|&slot| Cand {
            score: self.acc[slot as usize],
            slot,
        })
    }

    /// A slot's score (0: it matches nothing).
    fn score(&self, slot: u32) -> f64 {
        self.acc.get(slot as usize).copied().unwrap_or(0.0)
    }

    /// Back to all zeros.
    fn clear(&mut self) {
        for &slot in &self.touched[..self.touched_len] {
            self.acc[slot as usize] = 0.0;
        }
        self.touched_len = 0;
    }
}

thread_local! {
    static SCRATCH: Cell<Scratch> = const {
        Cell::new(Scratch {
            acc: Vec::new(),
            touched: Vec::new(),
            touched_len: 0,
        })
    };
}

/// Runs `f` with this thread's scratch. The scratch is taken out while `f` runs, so a
/// nested call (or a panic in `f`, which loses it) gets a fresh one: it is all zeros either
/// way.
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    let mut scratch = SCRATCH.try_with(Cell::take).unwrap_or_default();
    let out = f(&mut scratch);
    scratch.clear();
    // Thread teardown: nothing to keep it for.
    let _ = SCRATCH.try_with(|cell| cell.set(scratch));
    out
}

/// A term's weights are memoised per query for term frequencies `1..=MEMO_TF` and
/// document lengths `0..MEMO_DL` (the pairs nearly every posting has), so that a long
/// list costs a division per distinct pair, not per posting.
const MEMO_TF: usize = 4;
/// See [`MEMO_TF`].
const MEMO_DL: usize = 128;

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

/// A scope's live facts and their index.
///
/// Slots are handed out in log order and never reused: a new fact takes the next slot, a
/// deleted one leaves a hole (`None`) and tombstones its postings. So slot order is log
/// order, every postings list stays sorted by slot by appending, and the walk of a list is
/// sequential in memory. Holes are reclaimed by renumbering (re-slotting) the scope once
/// they outnumber the live facts, and a postings list drops its tombstones once they
/// outnumber its live entries: both amortised O(1) per delete, and a list is never more
/// than half dead.
#[derive(Debug, Clone, Default)]
pub struct ScopeMemory {
    /// By slot; `None`: a deleted fact's hole.
    slots: Vec<Option<Entry>>,
    /// Per slot, [`Entry::len`]: what scoring reads per posting, dense (4 bytes a slot)
    /// so that walking a long list reads a small array in slot order, not the facts.
    /// Stale for a hole (only tombstones name it).
    lens: Vec<u32>,
    /// Per slot, whether the fact's kind has a context section of its own.
    sections: Vec<bool>,
    /// How many slots are holes.
    holes: usize,
    by_id: HashMap<String, u32>,
    /// kind → slots (so in log order), for the context sections picked by kind.
    by_kind: HashMap<String, BTreeSet<u32>>,
    /// term → postings; a term no live fact contains has no entry.
    postings: HashMap<Box<str>, Postings>,
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
        self.slots.iter().flatten().map(|entry| &entry.fact)
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
        // The next slot is larger than every slot in use, so appending keeps every
        // postings list sorted.
        let slot = self.slots.len() as u32;
        let mut tfs: HashMap<String, u32> = HashMap::new();
        let mut len = 0u32;
        for_each_fact_token(&fact.subject, &fact.body, |t| {
            len += 1;
            *tfs.entry(t.into_owned()).or_default() += 1;
        });
        for (term, tf) in tfs {
            let posting = Posting { slot, tf };
            if let Some(postings) = self.postings.get_mut(term.as_str()) {
                postings.list.push(posting);
                postings.live += 1;
            } else {
                self.postings.insert(
                    term.into_boxed_str(),
                    Postings {
                        list: vec![posting],
                        live: 1,
                    },
                );
            }
        }
        for minter in Minter::ALL {
            if let Some(n) = minter.number(&fact.fact_id) {
                let seen = &mut self.minted[minter.index()];
                *seen = (*seen).max(n);
            }
        }
        self.total_len += u64::from(len);
        self.by_kind
            .entry(fact.kind.clone())
            .or_default()
            .insert(slot);
        self.by_id.insert(fact.fact_id.clone(), slot);
        self.lens.push(len);
        self.sections
            .push(super::context::is_section_kind(&fact.kind));
        self.slots.push(Some(Entry { fact, len }));
    }

    /// Removes a live fact: its slot becomes a hole and its postings tombstones.
    pub(crate) fn remove(&mut self, fact_id: &str) -> Option<Fact> {
        let slot = self.by_id.remove(fact_id)?;
        let entry = self.slots.get_mut(slot as usize)?.take()?;
        self.holes += 1;
        let postings = &mut self.postings;
        // A term repeated in the fact finds its posting already a tombstone (or gone).
        for_each_fact_token(&entry.fact.subject, &entry.fact.body, |t| {
            let Some(list) = postings.get_mut(t.as_ref()) else {
                return;
            };
            let Ok(i) = list.list.binary_search_by_key(&slot, |p| p.slot) else {
                return;
            };
            if list.list[i].tf == 0 {
                return;
            }
            list.list[i].tf = 0;
            list.live -= 1;
            if list.live == 0 {
                postings.remove(t.as_ref());
            } else if list.dead() > list.live as usize {
                list.list.retain(|p| p.tf != 0);
            }
        });
        self.total_len -= u64::from(entry.len);
        if let Some(slots) = self.by_kind.get_mut(&entry.fact.kind) {
            slots.remove(&slot);
            if slots.is_empty() {
                self.by_kind.remove(&entry.fact.kind);
            }
        }
        if self.holes > self.len() {
            self.reslot();
        }
        Some(entry.fact)
    }

    /// Renumbers the live facts `0..len` in log order, dropping every hole and tombstone.
    /// The renumbering is monotonic, so every list stays sorted. O(slots + postings).
    fn reslot(&mut self) {
        let mut renumber = vec![u32::MAX; self.slots.len()];
        let mut next = 0u32;
        for (old, entry) in self.slots.iter().enumerate() {
            if entry.is_some() {
                renumber[old] = next;
                next += 1;
            }
        }
        for list in self.postings.values_mut() {
            list.list.retain_mut(|p| {
                if p.tf == 0 {
                    return false;
                }
                p.slot = renumber[p.slot as usize];
                true
            });
        }
        let kept = |old: &mut usize| {
            *old += 1;
            renumber[*old - 1] != u32::MAX
        };
        let mut old = 0usize;
        self.lens.retain(|_| kept(&mut old));
        let mut old = 0usize;
        self.sections.retain(|_| kept(&mut old));
        self.slots.retain(Option::is_some);
        for slot in self.by_id.values_mut() {
            *slot = renumber[*slot as usize];
        }
        for slots in self.by_kind.values_mut() {
            *slots = slots.iter().map(|&slot| renumber[slot as usize]).collect();
        }
        self.holes = 0;
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

    /// Adds the BM25 score of every fact matching at least one of `terms` (distinct) into
    /// `scratch` (all zeros before), recording the slots touched. Terms go in query order,
    /// so each fact's score is the same sum, in the same order, as [`scan_query`]'s. Costs
    /// O(the postings of `terms`), each list walked in slot order.
    fn accumulate(&self, terms: &[String], scratch: &mut Scratch) {
        let n = self.len();
        if n == 0 {
            return;
        }
        let slots = self.slots.len();
        if scratch.acc.len() < slots {
            scratch.acc.resize(slots, 0.0);
            scratch.touched.resize(slots + 1, 0);
        }
        let acc = &mut scratch.acc[..slots];
        let touched = &mut scratch.touched[..=slots];
        let mut touched_len = scratch.touched_len;
        let lens = &self.lens[..slots];
        let n = n as f64;
        let avgdl = self.total_len as f64 / n;
        for term in terms {
            let Some(list) = self.postings.get(term.as_str()) else {
                continue;
            };
            let idf = idf(n, f64::from(list.live));
            // A term's weight depends on (tf, dl) only, and a long list repeats few pairs:
            // memoised (0: not yet computed; a weight is > 0), the same bits either way.
            let mut memo = [0.0f64; MEMO_TF * MEMO_DL];
            for &Posting { slot, tf } in &list.list {
                if tf == 0 {
                    continue;
                }
                let dl = lens[slot as usize];
                let (tf_at, dl_at) = (tf as usize - 1, dl as usize);
                let s = if tf_at < MEMO_TF && dl_at < MEMO_DL {
                    let w = &mut memo[tf_at * MEMO_DL + dl_at];
                    if *w == 0.0 {
                        *w = weight(idf, f64::from(tf), length_norm(f64::from(dl), avgdl));
                    }
                    *w
                } else {
                    weight(idf, f64::from(tf), length_norm(f64::from(dl), avgdl))
                };
                let cell = &mut acc[slot as usize];
                // Every contribution is > 0, so 0 means untouched. Branch-free: whether a
                // common term's fact was touched before is a coin toss for the predictor.
                touched[touched_len] = slot;
                touched_len += usize::from(*cell == 0.0);
                *cell += s;
            }
        }
        scratch.touched_len = touched_len;
    }

    fn hit(&self, c: Cand) -> Hit<'_> {
        Hit {
            fact: &self.entry(c.slot).fact,
            score: c.score,
        }
    }

    /// The `k` facts best matching `query`, best first (PROTOCOL.md §11.2).
    pub fn query(&self, query: &str, k: usize) -> Vec<Hit<'_>> {
        if k == 0 {
            return Vec::new();
        }
        let terms = query_terms(query);
        let best = with_scratch(|scratch| {
            self.accumulate(&terms, scratch);
            best(scratch.cands(), k)
        });
        best.into_iter().map(|c| self.hit(c)).collect()
    }

    /// For `build_context`: the best `cap` facts matching `terms` whose kind has no
    /// section of its own, best first; and every fact of `kind` with its score (0 when it
    /// matches nothing), least relevant first (the reverse of the ranking order).
    pub(crate) fn ranked_for_context<'a>(
        &'a self,
        terms: &[String],
        cap: usize,
        kind: &str,
    ) -> (Vec<Hit<'a>>, Vec<&'a Fact>) {
        let (others, mut of_kind) = with_scratch(|scratch| {
            self.accumulate(terms, scratch);
            let others = best(
                scratch.cands().filter(|c| !self.sections[c.slot as usize]),
                cap,
            );
            let of_kind: Vec<Cand> = self
                .by_kind
                .get(kind)
                .into_iter()
                .flatten()
                .map(|&slot| Cand {
                    score: scratch.score(slot),
                    slot,
                })
                .collect();
            (others, of_kind)
        });
        of_kind.sort_unstable();
        (
            others.into_iter().map(|c| self.hit(c)).collect(),
            of_kind
                .into_iter()
                .map(|c| &self.entry(c.slot).fact)
                .collect(),
        )
    }

    /// The index as plain data (for tests): tombstones and holes do not show.
    pub fn index_snapshot(&self) -> IndexSnapshot {
        let id = |slot: &u32| self.entry(*slot).fact.fact_id.clone();
        IndexSnapshot {
            postings: self
                .postings
                .iter()
                .map(|(term, list)| {
                    (
                        term.to_string(),
                        list.list
                            .iter()
                            .filter(|p| p.tf != 0)
                            .map(|p| (id(&p.slot), p.tf))
                            .collect(),
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
                .map(|(kind, slots)| (kind.clone(), slots.iter().map(id).collect()))
                .collect(),
        }
    }

    /// Checks the physical invariants the snapshot does not show (for tests): the per-slot
    /// arrays in step, the hole count, every list sorted by slot with its live count, not
    /// empty and at most half tombstones, live postings naming live slots and tombstones
    /// naming holes, at most as many holes as live facts.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.lens.len() != self.slots.len() || self.sections.len() != self.slots.len() {
            return Err(format!(
                "{} lengths and {} section flags for {} slots",
                self.lens.len(),
                self.sections.len(),
                self.slots.len()
            ));
        }
        let holes = self.slots.iter().filter(|s| s.is_none()).count();
        if holes != self.holes || holes > self.len() {
            return Err(format!(
                "{holes} holes (counted {}), {} live",
                self.holes,
                self.len()
            ));
        }
        if self.slots.len() - holes != self.len() {
            return Err("by_id does not match the occupied slots".into());
        }
        for (term, list) in &self.postings {
            if !list.list.windows(2).all(|w| w[0].slot < w[1].slot) {
                return Err(format!("`{term}`: not sorted by slot"));
            }
            let live = list.list.iter().filter(|p| p.tf != 0).count();
            if live != list.live as usize || live == 0 || list.dead() > live {
                return Err(format!(
                    "`{term}`: live {} (counted {live}), {} entries",
                    list.live,
                    list.list.len()
                ));
            }
            for p in &list.list {
                let occupied = matches!(self.slots.get(p.slot as usize), Some(Some(_)));
                if occupied != (p.tf != 0) {
                    return Err(format!("`{term}`: posting {p:?} on a wrong slot"));
                }
            }
        }
        Ok(())
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
