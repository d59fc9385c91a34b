//! Text rules of the ranking (PROTOCOL.md §11.2): tokens and stop words.
//!
//! A token is a maximal run of Unicode letters and digits ([`char::is_alphanumeric`]),
//! lower-cased ([`str::to_lowercase`]). No stemming and no locale: the same text gives the
//! same tokens on every machine, which `build_context`'s byte-for-byte determinism needs.
//! A fact's text is its subject twice, then its body (the subject says what the fact is
//! about, so its words weigh double).

use std::borrow::Cow;

/// The fixed English stop-word list (128 words, sorted; the contract allows at most 200).
/// Function words only: pronouns, articles, auxiliaries, prepositions, conjunctions, and
/// the `s`/`t`/`don` fragments that apostrophes leave (`user's` → `user`, `s`). The
/// negations `no`, `nor` and `not` are deliberately *not* on it: "not on Fridays" is a
/// constraint's whole point. Stop words are still indexed: a query made only of them
/// (`"who am I"`) ranks by them.
pub const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "don",
    "down",
    "during",
    "each",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "me",
    "more",
    "most",
    "my",
    "myself",
    "now",
    "of",
    "off",
    "on",
    "once",
    "only",
    "or",
    "other",
    "ought",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "s",
    "same",
    "shall",
    "she",
    "should",
    "so",
    "some",
    "such",
    "t",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
];

/// Whether `token` (lower-cased) is on [`STOP_WORDS`].
pub fn is_stop_word(token: &str) -> bool {
    STOP_WORDS.binary_search(&token).is_ok()
}

/// Calls `f` with each token of `text`, in order.
pub fn for_each_token(text: &str, mut f: impl FnMut(Cow<'_, str>)) {
    for run in text.split(|c: char| !c.is_alphanumeric()) {
        if run.is_empty() {
            continue;
        }
        if run.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
            f(Cow::Owned(run.to_lowercase()));
        } else {
            f(Cow::Borrowed(run));
        }
    }
}

/// The tokens of `text`, in order.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_token(text, |t| out.push(t.into_owned()));
    out
}

/// Calls `f` with each token of a fact's text: its subject twice, then its body.
pub fn for_each_fact_token(subject: &str, body: &str, mut f: impl FnMut(Cow<'_, str>)) {
    for_each_token(subject, &mut f);
    for_each_token(subject, &mut f);
    for_each_token(body, &mut f);
}

/// The terms a query ranks by: its distinct tokens in query order, without stop words
/// unless every token is one (then all of them).
pub fn query_terms(query: &str) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for_each_token(query, |t| {
        if !all.iter().any(|seen| *seen == *t) {
            all.push(t.into_owned());
        }
    });
    let content: Vec<String> = all.iter().filter(|t| !is_stop_word(t)).cloned().collect();
    if content.is_empty() { all } else { content }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stop_word_list_is_sorted_unique_and_within_the_limit() {
        assert!(STOP_WORDS.windows(2).all(|w| w[0] < w[1]));
        assert!(STOP_WORDS.len() <= 200);
        assert_eq!(STOP_WORDS.len(), 128);
        assert!(
            STOP_WORDS
                .iter()
                .all(|w| tokens(w) == vec![(*w).to_owned()])
        );
    }

    #[test]
    fn tokens_are_lower_cased_runs_of_letters_and_digits() {
        assert_eq!(
            tokens("Neovim, 4-space indents; ÉTÉ 要約 user's x_y\nIPv6!"),
            [
                "neovim", "4", "space", "indents", "été", "要約", "user", "s", "x", "y", "ipv6"
            ]
        );
        assert!(tokens("  ... -- !!").is_empty());
    }

    #[test]
    fn query_terms_drop_stop_words_unless_all_are() {
        assert_eq!(
            query_terms("What editor does the user prefer? editor"),
            ["editor", "user", "prefer"]
        );
        assert_eq!(query_terms("who am I"), ["who", "am", "i"]);
        assert!(query_terms("?!").is_empty());
    }

    #[test]
    fn a_fact_is_its_subject_twice_then_its_body() {
        let mut out = Vec::new();
        for_each_fact_token("Deploy policy", "No Fridays", |t| out.push(t.into_owned()));
        assert_eq!(
            out,
            ["deploy", "policy", "deploy", "policy", "no", "fridays"]
        );
    }
}
