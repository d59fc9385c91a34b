//! Memory benchmark (PROTOCOL.md §11.2): ranking quality on the labelled set, and the
//! latency of `memory.query` and `memory.build_context` through the inverted index at
//! 1 k, 10 k and 100 k facts in one scope, next to a linear scan over the same facts
//! measured in the same run.
//!
//! ```sh
//! cargo bench -p car-projections --bench memory      # CAR_BENCH_QUICK=1: fewer queries
//! CAR_BENCH_SIZES=100000 cargo bench -p car-projections --bench memory   # some sizes only
//! CAR_BENCH_DETAIL=1 cargo bench -p car-projections --bench memory  # + each query's best of 5
//! ```
//!
//! The table's p50/p99 are wall-clock latencies of single runs, so on a shared machine they
//! include preemption by other processes; `CAR_BENCH_DETAIL` adds, per size, the p50/p99
//! of each query's fastest of five runs (the index's own cost) and the slowest queries.
//!
//! Facts are synthetic, from a seeded generator: subjects of 2–4 and bodies of 8–40 words
//! drawn from a 20 000-word vocabulary with Zipf-like frequencies (word `r` with weight
//! 1/r, so a few words are in most facts, as in real text), with English stop words mixed
//! in; kinds as an agent's memory has them (mostly `pattern`/`note`, 5 % `conversation`,
//! 1 % `environment`, 0.2 % `constraint`, 0.05 % `identity`). Queries are 2–5 words drawn
//! the same way, plus stop words, so their postings lists are realistic, common terms
//! included.
//!
//! The scan is [`scan_query`]: BM25 by tokenising every fact for the query (what a daemon
//! without the index would do); for `build_context` the scan column is the scan ranking
//! of every fact (the part of `build_context` that would scan). Targets: p99 `query` at
//! 100 k facts ≤ 5 ms and ≥ 20× faster than the scan.

use std::path::Path;
use std::time::Instant;

use car_projections::memory::labelled::LabelledSet;
use car_projections::memory::{Fact, ScopeMemory, scan_query};
use chrono::DateTime;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The vocabulary size of the synthetic facts.
const VOCABULARY: usize = 20_000;
/// The scope sizes measured.
const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const STOP: &[&str] = &[
    "the", "a", "of", "to", "in", "is", "on", "for", "with", "and",
];

/// Zipf-like sampling over `VOCABULARY` words: inverse-CDF on the harmonic weights.
struct Words {
    cumulative: Vec<f64>,
}

impl Words {
    fn new() -> Self {
        let mut total = 0.0;
        let cumulative = (1..=VOCABULARY)
            .map(|r| {
                total += 1.0 / r as f64;
                total
            })
            .collect();
        Self { cumulative }
    }

    fn word(&self, rng: &mut StdRng) -> String {
        let total = self.cumulative[VOCABULARY - 1];
        let x = rng.random_range(0.0..total);
        let rank = self.cumulative.partition_point(|c| *c < x);
        // Pronounceable, distinct: base-20 syllables of the rank.
        const SYL: [&str; 20] = [
            "ka", "lo", "mi", "ne", "po", "ru", "sa", "te", "vi", "zo", "ba", "de", "fu", "ga",
            "hi", "jo", "ku", "li", "mo", "nu",
        ];
        let mut n = rank + 1;
        let mut word = String::new();
        while n > 0 {
            word.push_str(SYL[n % 20]);
            n /= 20;
        }
        word
    }

    fn text(&self, rng: &mut StdRng, min: usize, max: usize) -> String {
        let n = rng.random_range(min..=max);
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            if rng.random_bool(0.3) {
                out.push(STOP[rng.random_range(0..STOP.len())].to_owned());
            } else {
                out.push(self.word(rng));
            }
        }
        out.join(" ")
    }
}

fn kind(rng: &mut StdRng) -> &'static str {
    match rng.random_range(0..10_000) {
        0..5 => "identity",
        5..25 => "constraint",
        25..525 => "conversation",
        525..625 => "environment",
        625..5000 => "pattern",
        _ => "note",
    }
}

fn facts(n: usize, words: &Words) -> Vec<Fact> {
    let mut rng = StdRng::seed_from_u64(0x6d656d6f7279);
    (0..n)
        .map(|i| Fact {
            fact_id: format!("ws-{}", i + 1),
            subject: words.text(&mut rng, 2, 4),
            body: words.text(&mut rng, 8, 40),
            kind: kind(&mut rng).to_owned(),
            tags: Vec::new(),
            source: "user".into(),
            created_at: DateTime::UNIX_EPOCH,
            seq: i as u64 + 1,
        })
        .collect()
}

fn queries(n: usize, words: &Words) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(0x7175657279);
    (0..n).map(|_| words.text(&mut rng, 2, 5)).collect()
}

/// The resident set of this process in bytes (Linux; 0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// p50 and p99 in milliseconds of `f` over every query.
fn measure(queries: &[String], mut f: impl FnMut(&str) -> usize) -> (f64, f64, usize) {
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut sink = 0;
    for q in queries {
        let start = Instant::now();
        sink += f(q);
        hist.record(start.elapsed().as_nanos() as u64)
            .expect("record");
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1e6;
    (ms(0.5), ms(0.99), sink)
}

fn main() {
    let quick = std::env::var_os("CAR_BENCH_QUICK").is_some();
    let sizes: Vec<usize> = match std::env::var("CAR_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("CAR_BENCH_SIZES: sizes like 1000,100000")
            })
            .collect(),
        Err(_) => SIZES.to_vec(),
    };

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/memory-ranking.json");
    let text = std::fs::read_to_string(&path).expect("the labelled set");
    let set = LabelledSet::parse(&text).expect("the labelled set parses");
    let figures = set.evaluate();
    println!(
        "labelled set ({} facts, {} queries): MRR {:.3}, recall@3 {:.3}",
        set.facts.len(),
        set.queries.len(),
        figures.mrr,
        figures.recall_at_3
    );
    println!();

    let words = Words::new();
    let all = facts(sizes.iter().copied().max().unwrap_or(0), &words);
    let indexed_queries = queries(if quick { 200 } else { 2_000 }, &words);
    println!(
        "{:>7} | {:>21} | {:>21} | {:>7} | {:>21} | {:>21}",
        "facts",
        "query p50 / p99 ms",
        "scan p50 / p99 ms",
        "p99 ×",
        "context p50 / p99 ms",
        "scan-rank p50 / p99"
    );
    for n in sizes {
        let slice = &all[..n];
        let before = resident_bytes();
        let build = Instant::now();
        let scope = ScopeMemory::from_facts(slice);
        let build_ms = build.elapsed().as_secs_f64() * 1e3;
        // Facts (cloned into the scope) and their index; freed memory the allocator reuses
        // makes this an underestimate, so only the largest size (built last) is reliable.
        let grown = resident_bytes().saturating_sub(before);
        let refs: Vec<&Fact> = slice.iter().collect();
        // The scan costs O(n) per query: fewer queries at 100 k (its p99 is then near its max).
        let scan_count = if quick {
            20
        } else {
            (2_000_000 / n).clamp(50, 500)
        };
        let scan_queries = &indexed_queries[..scan_count.min(indexed_queries.len())];

        // Interleave: index, scan, index, so noise hits both alike.
        let (q50, q99, s1) = measure(&indexed_queries, |q| scope.query(q, 5).len());
        let (s50, s99, s2) = measure(scan_queries, |q| scan_query(&refs, q, 5).len());
        let (c50, c99, s3) = measure(&indexed_queries, |q| scope.build_context(q).len());
        let (r50, r99, s4) = measure(scan_queries, |q| scan_query(&refs, q, usize::MAX).len());
        println!(
            "{n:>7} | {q50:>9.3} / {q99:>9.3} | {s50:>9.3} / {s99:>9.3} | {:>7.0} | {c50:>9.3} / {c99:>9.3} | {r50:>9.3} / {r99:>9.3}",
            s99 / q99
        );
        if std::env::var_os("CAR_BENCH_DETAIL").is_some() {
            // Each query's fastest of 5 runs: the latency without preemption by other
            // processes, to tell the index's own tail from the machine's.
            let mut best = vec![u64::MAX; indexed_queries.len()];
            for _ in 0..5 {
                for (i, q) in indexed_queries.iter().enumerate() {
                    let start = Instant::now();
                    std::hint::black_box(scope.query(q, 5));
                    best[i] = best[i].min(start.elapsed().as_nanos() as u64);
                }
            }
            let mut sorted: Vec<(u64, usize)> = best.iter().copied().zip(0..).collect();
            sorted.sort_unstable();
            let at = |q: f64| {
                sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].0 as f64 / 1e6
            };
            println!(
                "          query fastest-of-5: p50 {:.3} p99 {:.3} max {:.3} ms",
                at(0.5),
                at(0.99),
                at(1.0)
            );
            for &(ns, i) in sorted.iter().rev().take(3) {
                println!(
                    "            {:.3} ms {:?}",
                    ns as f64 / 1e6,
                    indexed_queries[i]
                );
            }
        }
        println!(
            "          (index built in {build_ms:.0} ms, resident set +{:.1} MB = {:.0} B/fact; {} indexed and {} scanned queries; checksum {})",
            grown as f64 / 1e6,
            grown as f64 / n as f64,
            indexed_queries.len(),
            scan_queries.len(),
            s1 + s2 + s3 + s4
        );
    }
}

/// `build_context` with the default budget.
trait Context {
    fn build_context(&self, query: &str) -> String;
}

impl Context for ScopeMemory {
    fn build_context(&self, query: &str) -> String {
        car_projections::memory::build_context(self, query, None)
    }
}
