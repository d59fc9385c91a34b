//! `session.init`, `tools.register`, `tools.list` (PROTOCOL.md §4.1): the tools a session
//! offers for proposals, and its policies.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::rpc::{self, RpcError};
use crate::session::{Responder, Session};
use crate::tools::{Policy, Rule, ToolSpec};

#[derive(Debug, Deserialize)]
struct PolicyParams {
    name: String,
    rule: String,
    target: String,
    key: Option<String>,
    pattern: Option<String>,
}

fn policy(index: usize, p: PolicyParams) -> Result<Policy, RpcError> {
    let field = |name: &str| format!("policies[{index}].{name}");
    let rule = match p.rule.as_str() {
        "deny_tool" => Rule::DenyTool { target: p.target },
        "deny_tool_param" => Rule::DenyToolParam {
            target: p.target,
            key: p
                .key
                .ok_or_else(|| RpcError::params(&field("key"), "required by deny_tool_param"))?,
            pattern: p.pattern.ok_or_else(|| {
                RpcError::params(&field("pattern"), "required by deny_tool_param")
            })?,
        },
        other => {
            return Err(RpcError::params(
                &field("rule"),
                format!("unknown rule `{other}` (expected deny_tool or deny_tool_param)"),
            ));
        }
    };
    Ok(Policy { name: p.name, rule })
}

fn check_tools(tools: &[ToolSpec]) -> Result<(), RpcError> {
    for (i, tool) in tools.iter().enumerate() {
        if tool.name.trim().is_empty() {
            return Err(RpcError::params(
                &format!("tools[{i}].name"),
                "must not be empty",
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct InitParams {
    #[serde(default)]
    tools: Vec<ToolSpec>,
    #[serde(default)]
    policies: Vec<PolicyParams>,
}

/// `session.init`: registers tools and policies (added to any registered before).
pub(crate) async fn init(session: &mut Session, params: Value, responder: Responder) {
    let result = (|| {
        let params: InitParams = rpc::parse(params)?;
        check_tools(&params.tools)?;
        let policies = params
            .policies
            .into_iter()
            .enumerate()
            .map(|(i, p)| policy(i, p))
            .collect::<Result<Vec<_>, _>>()?;
        let (tools_registered, policies_registered) = (params.tools.len(), policies.len());
        for tool in params.tools {
            session.tools.tools.insert(tool.name.clone(), tool);
        }
        session.tools.policies.extend(policies);
        Ok(json!({
            "session_id": session.client_id,
            "tools_registered": tools_registered,
            "policies_registered": policies_registered,
        }))
    })();
    responder.send(result).await;
}

#[derive(Debug, Deserialize)]
struct RegisterParams {
    tools: Vec<ToolSpec>,
}

/// `tools.register`.
pub(crate) async fn register(session: &mut Session, params: Value, responder: Responder) {
    let result = rpc::parse::<RegisterParams>(params).and_then(|params| {
        check_tools(&params.tools)?;
        let registered = params.tools.len();
        for tool in params.tools {
            session.tools.tools.insert(tool.name.clone(), tool);
        }
        Ok(json!({"registered": registered}))
    });
    responder.send(result).await;
}

/// `tools.list`: the session's tools, sorted by name.
pub(crate) async fn list(session: &mut Session, params: Value, responder: Responder) {
    let result = rpc::parse::<serde_json::Map<String, Value>>(params).map(|_| {
        let tools: Vec<Value> = session
            .tools
            .tools
            .values()
            .map(|t| json!({"name": t.name, "description": t.description, "parameters": t.parameters}))
            .collect();
        json!({"count": tools.len(), "tools": tools})
    });
    responder.send(result).await;
}
