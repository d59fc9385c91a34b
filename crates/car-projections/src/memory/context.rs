//! `memory.build_context` (PROTOCOL.md §11.2): a scope's facts as a prompt section,
//! deterministic to the byte, within a token budget.
//!
//! Sections, in this order, each `## <name>`, its lines, then a blank line; an empty
//! section is left out entirely (no fact at all: `""`):
//!
//! | section | lines |
//! |---|---|
//! | `## Identity` | every `identity` fact, oldest first |
//! | `## Constraints` | every `constraint` fact, least relevant to the query first |
//! | `## Facts` | facts of every other kind matching the query, least relevant first (the best sits nearest the prompt) |
//! | `## Conversation` | the newest 20 `conversation` facts, oldest first |
//! | `## Environment` | the newest 5 `environment` facts, oldest first |
//! | `## Known Unknowns` | the query's tokens, stop words removed, that no live fact contains, in query order, once each |
//!
//! A fact line is `- [<fact_id>] <subject>: <body>` with every line break (CR LF, LF,
//! CR, VT, FF, NEL, U+2028, U+2029) turned into one space; an unknown is `- <token>`.
//!
//! Budget: a line costs `ceil(bytes / 4)` tokens where `bytes` counts the line *with its
//! terminating newline*, so headers and the blank lines between sections cost too (a blank
//! line costs 1). The budget is 8000 tokens, or with a model context window `W`,
//! `max(2000, floor((W − 4096) × 0.4))`. While the whole text is over it, lines go one at a
//! time from the top of the first non-empty section in the order Facts (so the least
//! relevant first), Conversation (oldest first), Environment (oldest first), Known
//! Unknowns (in query order), Constraints (least relevant first), Identity (oldest first);
//! a section losing its last line loses its header and blank line too.

use std::collections::VecDeque;

use super::index::ScopeMemory;
use super::text::{for_each_token, is_stop_word, query_terms};

/// The budget without a model context window, in tokens (CAR's default).
pub const DEFAULT_BUDGET_TOKENS: u64 = 8000;
/// The smallest budget a model context window gives (ext).
pub const MIN_BUDGET_TOKENS: u64 = 2000;
/// What a model context window keeps for the prompt and answer before memory's share.
pub const WINDOW_RESERVE_TOKENS: i64 = 4096;
/// How many `conversation` facts the context shows at most (the newest).
pub const CONVERSATION_LINES: usize = 20;
/// How many `environment` facts the context shows at most (the newest).
pub const ENVIRONMENT_LINES: usize = 5;

/// The kinds that pick a section of their own; every other kind goes to `## Facts`.
pub const SECTION_KINDS: [&str; 4] = ["identity", "constraint", "conversation", "environment"];

/// Whether facts of `kind` have a section of their own.
pub fn is_section_kind(kind: &str) -> bool {
    SECTION_KINDS.contains(&kind)
}

/// The budget in tokens for a model context window (`None`: the default).
pub fn context_budget(model_context_window: Option<u64>) -> u64 {
    match model_context_window {
        None => DEFAULT_BUDGET_TOKENS,
        Some(w) => {
            let w = i64::try_from(w).unwrap_or(i64::MAX / 2);
            // floor((W − 4096) × 0.4) = floor((W − 4096) × 2 / 5), exactly, in integers.
            let share = (w - WINDOW_RESERVE_TOKENS).saturating_mul(2).div_euclid(5);
            u64::try_from(share).unwrap_or(0).max(MIN_BUDGET_TOKENS)
        }
    }
}

/// The cost of one line of `bytes` bytes (without its newline), in tokens.
pub fn line_tokens(bytes: usize) -> u64 {
    (bytes as u64 + 1).div_ceil(4)
}

/// `text` with every line break turned into one space.
fn one_line(text: &str, out: &mut String) {
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push(' ');
            }
            '\n' | '\u{0B}' | '\u{0C}' | '\u{85}' | '\u{2028}' | '\u{2029}' => out.push(' '),
            c => out.push(c),
        }
    }
}

fn fact_line(fact: &super::Fact) -> String {
    let mut line =
        String::with_capacity(8 + fact.fact_id.len() + fact.subject.len() + fact.body.len());
    line.push_str("- [");
    line.push_str(&fact.fact_id);
    line.push_str("] ");
    one_line(&fact.subject, &mut line);
    line.push_str(": ");
    one_line(&fact.body, &mut line);
    line
}

struct Section {
    name: &'static str,
    /// In display order; dropped from the front.
    lines: VecDeque<String>,
}

impl Section {
    fn new(name: &'static str, lines: impl IntoIterator<Item = String>) -> Self {
        Self {
            name,
            lines: lines.into_iter().collect(),
        }
    }

    /// Header + blank line.
    fn frame_tokens(&self) -> u64 {
        line_tokens(3 + self.name.len()) + line_tokens(0)
    }

    fn tokens(&self) -> u64 {
        if self.lines.is_empty() {
            return 0;
        }
        self.frame_tokens() + self.lines.iter().map(|l| line_tokens(l.len())).sum::<u64>()
    }
}

/// Builds the context of `scope` for `query` (see the module docs).
pub fn build_context(
    scope: &ScopeMemory,
    query: &str,
    model_context_window: Option<u64>,
) -> String {
    let budget = context_budget(model_context_window);
    let terms = query_terms(query);
    // Every fact line costs at least 3 tokens (`- [x] s: b` and its newline), so no more
    // than budget / 3 + 1 facts can ever fit: rank only that many of the matches.
    let cap = usize::try_from(budget / 3 + 1).unwrap_or(usize::MAX);
    let (best_facts, constraints) = scope.ranked_for_context(&terms, cap, "constraint");

    let identity = Section::new("Identity", scope.facts_of_kind("identity").map(fact_line));
    let constraints = Section::new("Constraints", constraints.into_iter().map(fact_line));
    let facts = Section::new(
        "Facts",
        best_facts.iter().rev().map(|hit| fact_line(hit.fact)),
    );
    let newest = |kind: &str, n: usize| {
        let mut lines: Vec<String> = scope
            .facts_of_kind(kind)
            .rev()
            .take(n)
            .map(fact_line)
            .collect();
        lines.reverse();
        lines
    };
    let conversation = Section::new("Conversation", newest("conversation", CONVERSATION_LINES));
    let environment = Section::new("Environment", newest("environment", ENVIRONMENT_LINES));
    let mut unknowns: Vec<String> = Vec::new();
    for_each_token(query, |t| {
        if !is_stop_word(&t) && !scope.has_term(&t) && !unknowns.iter().any(|u| *u == *t) {
            unknowns.push(t.into_owned());
        }
    });
    let unknowns = Section::new(
        "Known Unknowns",
        unknowns.into_iter().map(|t| format!("- {t}")),
    );

    // Display order, and the order lines are dropped in (indices into `sections`).
    let mut sections = [
        identity,
        constraints,
        facts,
        conversation,
        environment,
        unknowns,
    ];
    const DROP_ORDER: [usize; 6] = [2, 3, 4, 5, 1, 0];
    let mut total: u64 = sections.iter().map(Section::tokens).sum();
    for i in DROP_ORDER {
        while total > budget {
            let section = &mut sections[i];
            let Some(line) = section.lines.pop_front() else {
                break;
            };
            total -= line_tokens(line.len());
            if section.lines.is_empty() {
                total -= section.frame_tokens();
            }
        }
    }

    let mut out = String::new();
    for section in &sections {
        if section.lines.is_empty() {
            continue;
        }
        out.push_str("## ");
        out.push_str(section.name);
        out.push('\n');
        for line in &section.lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_follows_the_window() {
        assert_eq!(context_budget(None), 8000);
        assert_eq!(context_budget(Some(1)), 2000);
        assert_eq!(context_budget(Some(4096)), 2000);
        assert_eq!(context_budget(Some(9096)), 2000);
        assert_eq!(context_budget(Some(9098)), 2000);
        assert_eq!(context_budget(Some(9101)), 2002);
        assert_eq!(context_budget(Some(128_000)), 49_561);
        assert_eq!(context_budget(Some(10_000_000)), 3_998_361);
    }

    #[test]
    fn a_line_costs_its_bytes_and_newline_over_four_rounded_up() {
        assert_eq!(line_tokens(0), 1);
        assert_eq!(line_tokens(3), 1);
        assert_eq!(line_tokens(4), 2);
        assert_eq!(line_tokens(7), 2);
        assert_eq!(line_tokens(8), 3);
    }

    #[test]
    fn line_breaks_become_spaces() {
        let mut out = String::new();
        one_line("a\r\nb\nc\rd\u{2028}e\u{85}f", &mut out);
        assert_eq!(out, "a b c d e f");
    }
}
