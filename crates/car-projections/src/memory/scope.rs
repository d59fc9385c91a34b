//! Memory scopes: which graph a caller's facts live in (PROTOCOL.md §11.1).
//!
//! A session uses `ns:<namespace>` if it gave a `memory_namespace`, else `agent:<agent_id>`
//! if it is agent-bound, else `shared` (clients, hosts, MCP). Events carry the scope as its
//! text form ([`Scope::as_key`]), which [`Scope::parse`] reads back.

use std::fmt;

/// The longest namespace, in bytes (§11.1: `memory_namespace` is 1–256 bytes).
pub const MAX_NAMESPACE_BYTES: usize = 256;

/// One memory scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// The daemon-wide graph.
    Shared,
    /// `ns:<namespace>`: a session that gave `memory_namespace`.
    Namespace(String),
    /// `agent:<agent_id>`: an agent-bound session without a namespace.
    Agent(String),
}

/// Why a text is not a scope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// Neither `shared` nor `ns:…` nor `agent:…`.
    #[error("scope `{0}` is not `shared`, `ns:<namespace>` or `agent:<agent_id>`")]
    Unknown(String),
    /// A namespace breaking §11.1's rule.
    #[error("namespace {0}")]
    Namespace(&'static str),
    /// An empty agent id.
    #[error("agent id is empty")]
    EmptyAgent,
}

impl Scope {
    /// The scope a session uses: its namespace wins over its agent binding (§11.1).
    pub fn for_session(namespace: Option<&str>, agent_id: Option<&str>) -> Scope {
        match (namespace, agent_id) {
            (Some(ns), _) => Scope::Namespace(ns.to_owned()),
            (None, Some(agent)) => Scope::Agent(agent.to_owned()),
            (None, None) => Scope::Shared,
        }
    }

    /// Checks a `memory_namespace`: 1–256 bytes of UTF-8 without control characters.
    pub fn check_namespace(namespace: &str) -> Result<(), ScopeError> {
        if namespace.is_empty() {
            Err(ScopeError::Namespace("is empty"))
        } else if namespace.len() > MAX_NAMESPACE_BYTES {
            Err(ScopeError::Namespace("exceeds 256 bytes"))
        } else if namespace.chars().any(char::is_control) {
            Err(ScopeError::Namespace("contains a control character"))
        } else {
            Ok(())
        }
    }

    /// Parses the text form (`shared`, `ns:<namespace>`, `agent:<agent_id>`).
    pub fn parse(text: &str) -> Result<Scope, ScopeError> {
        if text == "shared" {
            Ok(Scope::Shared)
        } else if let Some(ns) = text.strip_prefix("ns:") {
            Scope::check_namespace(ns)?;
            Ok(Scope::Namespace(ns.to_owned()))
        } else if let Some(agent) = text.strip_prefix("agent:") {
            if agent.is_empty() {
                return Err(ScopeError::EmptyAgent);
            }
            Ok(Scope::Agent(agent.to_owned()))
        } else {
            Err(ScopeError::Unknown(text.to_owned()))
        }
    }

    /// The text form, as events carry it.
    pub fn as_key(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Shared => f.write_str("shared"),
            Scope::Namespace(ns) => write!(f, "ns:{ns}"),
            Scope::Agent(agent) => write!(f, "agent:{agent}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format_round_trip() {
        for scope in [
            Scope::Shared,
            Scope::Namespace("team-alpha".into()),
            Scope::Namespace("a:b c/é".into()),
            Scope::Agent("agent-researcher".into()),
        ] {
            assert_eq!(Scope::parse(&scope.as_key()), Ok(scope));
        }
    }

    #[test]
    fn parse_refuses_what_is_not_a_scope() {
        assert!(matches!(
            Scope::parse("global"),
            Err(ScopeError::Unknown(_))
        ));
        assert!(Scope::parse("ns:").is_err());
        assert!(Scope::parse("ns:a\u{7}b").is_err());
        assert!(Scope::parse(&format!("ns:{}", "x".repeat(257))).is_err());
        assert!(Scope::parse(&format!("ns:{}", "x".repeat(256))).is_ok());
        assert_eq!(Scope::parse("agent:"), Err(ScopeError::EmptyAgent));
    }

    #[test]
    fn a_namespace_wins_over_an_agent_binding() {
        assert_eq!(
            Scope::for_session(Some("n"), Some("a")),
            Scope::Namespace("n".into())
        );
        assert_eq!(
            Scope::for_session(None, Some("a")),
            Scope::Agent("a".into())
        );
        assert_eq!(Scope::for_session(None, None), Scope::Shared);
    }
}
