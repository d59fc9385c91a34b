//! The labelled ranking set (`tests/data/memory-ranking.json`) and its figures, MRR and
//! recall@3, computed here once so that the ranking test and the bench report the same
//! numbers. A replacement ranking must do at least as well on it (PROTOCOL.md §11.2).

use chrono::DateTime;
use serde::Deserialize;

use super::index::{Fact, MAX_K_FOR_EVAL, ScopeMemory};

/// One fact of the set.
#[derive(Debug, Clone, Deserialize)]
pub struct LabelledFact {
    /// Its id.
    pub fact_id: String,
    /// Its subject.
    pub subject: String,
    /// Its body.
    pub body: String,
    /// Its kind.
    pub kind: String,
}

/// One query and the facts that answer it.
#[derive(Debug, Clone, Deserialize)]
pub struct LabelledQuery {
    /// The question, as an agent would ask it.
    pub query: String,
    /// The ids of the facts that answer it.
    pub relevant: Vec<String>,
}

/// The whole set.
#[derive(Debug, Clone, Deserialize)]
pub struct LabelledSet {
    /// What it is.
    pub description: String,
    /// The facts, in the order they are added.
    pub facts: Vec<LabelledFact>,
    /// The queries.
    pub queries: Vec<LabelledQuery>,
}

/// How well a ranking did on the set.
#[derive(Debug, Clone, PartialEq)]
pub struct RankingFigures {
    /// Mean reciprocal rank of the first relevant fact (0 for a query that finds none in
    /// its top 50).
    pub mrr: f64,
    /// Mean over the queries of |relevant ∩ top 3| / |relevant|.
    pub recall_at_3: f64,
    /// The queries whose relevant facts are not all in the top 3, with the top 3 found.
    pub misses: Vec<(String, Vec<String>)>,
}

impl LabelledSet {
    /// Parses the set's JSON.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The set's facts as one scope, in order (times and seqs are placeholders: ranking
    /// does not read them).
    pub fn scope(&self) -> ScopeMemory {
        let facts: Vec<Fact> = self
            .facts
            .iter()
            .enumerate()
            .map(|(i, f)| Fact {
                fact_id: f.fact_id.clone(),
                subject: f.subject.clone(),
                body: f.body.clone(),
                kind: f.kind.clone(),
                tags: Vec::new(),
                source: "user".into(),
                created_at: DateTime::UNIX_EPOCH,
                seq: i as u64 + 1,
            })
            .collect();
        ScopeMemory::from_facts(&facts)
    }

    /// Ranks every query with [`ScopeMemory::query`] and scores the result.
    pub fn evaluate(&self) -> RankingFigures {
        let scope = self.scope();
        let (mut rr, mut recall) = (0.0, 0.0);
        let mut misses = Vec::new();
        for q in &self.queries {
            let hits: Vec<&str> = scope
                .query(&q.query, MAX_K_FOR_EVAL)
                .iter()
                .map(|h| h.fact.fact_id.as_str())
                .collect();
            if let Some(rank) = hits
                .iter()
                .position(|id| q.relevant.iter().any(|r| r == id))
            {
                rr += 1.0 / (rank + 1) as f64;
            }
            let top3 = &hits[..hits.len().min(3)];
            let found = q
                .relevant
                .iter()
                .filter(|r| top3.contains(&r.as_str()))
                .count();
            recall += found as f64 / q.relevant.len().max(1) as f64;
            if found < q.relevant.len() {
                misses.push((
                    q.query.clone(),
                    top3.iter().map(|s| s.to_string()).collect(),
                ));
            }
        }
        let n = self.queries.len().max(1) as f64;
        RankingFigures {
            mrr: rr / n,
            recall_at_3: recall / n,
            misses,
        }
    }
}
