//! The ranking on the committed labelled set (`tests/data/memory-ranking.json`, at least
//! 100 hand-written facts over distinct topics and 30 questions with the facts that answer
//! them): prints MRR and recall@3 and requires recall@3 ≥ 0.9 (PROTOCOL.md §11.2).

use std::path::Path;

use car_projections::memory::labelled::LabelledSet;

pub(crate) fn labelled_set() -> LabelledSet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/memory-ranking.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    LabelledSet::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_labelled_set_is_big_enough_and_consistent() {
    let set = labelled_set();
    assert!(set.facts.len() >= 100, "{} facts", set.facts.len());
    assert!(set.queries.len() >= 30, "{} queries", set.queries.len());
    let ids: std::collections::HashSet<&str> =
        set.facts.iter().map(|f| f.fact_id.as_str()).collect();
    assert_eq!(ids.len(), set.facts.len(), "fact ids are distinct");
    for q in &set.queries {
        assert!(!q.relevant.is_empty(), "{}", q.query);
        for id in &q.relevant {
            assert!(ids.contains(id.as_str()), "{}: unknown fact {id}", q.query);
        }
    }
}

#[test]
fn bm25_finds_the_answers_in_its_top_three() {
    let figures = labelled_set().evaluate();
    println!(
        "memory ranking on the labelled set: MRR {:.3}, recall@3 {:.3}",
        figures.mrr, figures.recall_at_3
    );
    for (query, top3) in &figures.misses {
        println!("  miss: {query:?} -> {top3:?}");
    }
    assert!(
        figures.recall_at_3 >= 0.9,
        "recall@3 {:.3} < 0.9; misses: {:#?}",
        figures.recall_at_3,
        figures.misses
    );
}
