//! The `proposal.submit` result (PROTOCOL.md §4.2) built from its actions' outcomes
//! (`proposal.action_finished`, §14.5): one shape for the daemon answering a proposal and
//! for start-up completing one a crash cut off.

use car_events::event::ProposalActionFinished;
use serde_json::{Map, Value, json};

/// Collects a proposal's actions, in order, into its result.
#[derive(Debug, Default)]
pub struct ResultBuilder {
    results: Vec<Value>,
    outputs: Map<String, Value>,
    errors: Map<String, Value>,
}

impl ResultBuilder {
    /// An action that ended as `outcome` says.
    pub fn outcome(&mut self, outcome: &ProposalActionFinished) {
        let mut result = Map::new();
        result.insert("action_id".into(), json!(outcome.action_id));
        result.insert("status".into(), json!(outcome.status));
        if let Some(output) = &outcome.output {
            let output = output.to_value();
            self.outputs
                .insert(outcome.action_id.clone(), output.clone());
            result.insert("output".into(), output);
        }
        if let Some(error) = &outcome.error {
            self.errors.insert(outcome.action_id.clone(), json!(error));
            result.insert("error".into(), json!(error));
        }
        result.insert("attempts".into(), json!(outcome.attempts));
        self.results.push(Value::Object(result));
    }

    /// An action that never ran.
    pub fn skipped(&mut self, action_id: &str) {
        self.results
            .push(json!({"action_id": action_id, "status": "skipped", "attempts": 0}));
    }

    /// The result.
    pub fn finish(self, proposal_id: &str, final_state: &str) -> Value {
        json!({
            "proposal_id": proposal_id,
            "final_state": final_state,
            "outputs": self.outputs,
            "errors": self.errors,
            "results": self.results,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use car_events::JsonText;

    fn outcome(
        action: &str,
        status: &str,
        output: Option<Value>,
        error: Option<&str>,
    ) -> ProposalActionFinished {
        ProposalActionFinished {
            proposal_id: "p".into(),
            action_id: action.into(),
            status: status.into(),
            output: output.map(JsonText::from),
            error: error.map(Into::into),
            attempts: 1,
        }
    }

    #[test]
    fn outputs_and_errors_are_keyed_by_action_and_results_keep_the_order() {
        let mut builder = ResultBuilder::default();
        builder.outcome(&outcome("a", "succeeded", Some(json!({"n": 1})), None));
        builder.outcome(&outcome("b", "rejected", None, Some("no")));
        builder.skipped("c");
        assert_eq!(
            builder.finish("p", "failed"),
            json!({
                "proposal_id": "p",
                "final_state": "failed",
                "outputs": {"a": {"n": 1}},
                "errors": {"b": "no"},
                "results": [
                    {"action_id": "a", "status": "succeeded", "output": {"n": 1}, "attempts": 1},
                    {"action_id": "b", "status": "rejected", "error": "no", "attempts": 1},
                    {"action_id": "c", "status": "skipped", "attempts": 0},
                ],
            })
        );
    }
}
