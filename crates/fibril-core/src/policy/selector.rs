//! Label selectors with Kubernetes semantics, validated once: `matchLabels` AND every
//! `matchExpressions` requirement (`In`, `NotIn`, `Exists`, `DoesNotExist`); the empty selector
//! selects everything. A missing key matches `NotIn` and `DoesNotExist`, as in
//! apimachinery's `labels.Selector`.
//!
//! Matching is [`crate::manifest::label_selector_matches`] (the one evaluator of structured
//! selectors in fibril-core); this type adds the validation the API server performs on
//! NetworkPolicy selectors, with errors naming the field.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use crate::manifest::label_selector_matches;

/// A selector problem: the field path (relative to the selector) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorProblem {
    pub field: String,
    pub message: String,
}

/// A validated label selector.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Selector {
    inner: LabelSelector,
}

impl Selector {
    /// Validates `sel`; every problem is reported, each with its field path under `path`.
    pub fn new(sel: &LabelSelector, path: &str) -> Result<Self, Vec<SelectorProblem>> {
        let mut problems = Vec::new();
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let base = format!("{path}.matchExpressions[{i}]");
            let n = e.values.as_ref().map_or(0, Vec::len);
            match e.operator.as_str() {
                "In" | "NotIn" if n == 0 => problems.push(SelectorProblem {
                    field: format!("{base}.values"),
                    message: format!("must be specified when `operator` is '{}'", e.operator),
                }),
                "Exists" | "DoesNotExist" if n > 0 => problems.push(SelectorProblem {
                    field: format!("{base}.values"),
                    message: format!(
                        "may not be specified when `operator` is '{}'",
                        e.operator
                    ),
                }),
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                op => problems.push(SelectorProblem {
                    field: format!("{base}.operator"),
                    message: format!(
                        "not a valid selector operator {op:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                    ),
                }),
            }
            if e.key.is_empty() {
                problems.push(SelectorProblem {
                    field: format!("{base}.key"),
                    message: "required".into(),
                });
            }
        }
        if problems.is_empty() {
            Ok(Selector { inner: sel.clone() })
        } else {
            Err(problems)
        }
    }

    /// The selector that selects everything (`{}`).
    pub fn everything() -> Self {
        Selector::default()
    }

    pub fn is_empty(&self) -> bool {
        self.inner
            .match_labels
            .as_ref()
            .is_none_or(|m| m.is_empty())
            && self
                .inner
                .match_expressions
                .as_ref()
                .is_none_or(|m| m.is_empty())
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        // Operators were validated in `new`, so the evaluator cannot fail.
        label_selector_matches(&self.inner, labels).unwrap_or(false)
    }

    /// Every label key the selector reads.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.inner
            .match_labels
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .chain(
                self.inner
                    .match_expressions
                    .iter()
                    .flatten()
                    .map(|e| e.key.as_str()),
            )
    }

    pub fn as_k8s(&self) -> &LabelSelector {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    use crate::policy::test_labels as labels;

    #[test]
    fn kubernetes_semantics() {
        let l = labels(&[("pod", "a"), ("tier", "web")]);
        let ok = |v| Selector::new(&sel(v), "s").unwrap().matches(&l);
        assert!(ok(json!({})));
        assert!(ok(json!({"matchLabels": {"pod": "a"}})));
        assert!(!ok(json!({"matchLabels": {"pod": "a", "x": "y"}})));
        assert!(ok(
            json!({"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a", "b"]}]})
        ));
        assert!(!ok(
            json!({"matchExpressions": [{"key": "pod", "operator": "NotIn", "values": ["a"]}]})
        ));
        // A missing key matches NotIn (apimachinery), and DoesNotExist.
        assert!(ok(
            json!({"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["z"]}]})
        ));
        assert!(ok(
            json!({"matchExpressions": [{"key": "zone", "operator": "DoesNotExist"}]})
        ));
        assert!(!ok(
            json!({"matchExpressions": [{"key": "zone", "operator": "Exists"}]})
        ));
        // matchLabels AND matchExpressions.
        assert!(!ok(json!({"matchLabels": {"pod": "a"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["db"]}]})));
        assert!(Selector::new(&sel(json!({"matchExpressions": []})), "s")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn invalid_selectors_name_the_field() {
        let e = Selector::new(
            &sel(json!({"matchExpressions": [
                {"key": "a", "operator": "In"},
                {"key": "b", "operator": "Exists", "values": ["x"]},
                {"key": "c", "operator": "Gt", "values": ["1"]}
            ]})),
            "spec.podSelector",
        )
        .unwrap_err();
        let fields: Vec<&str> = e.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "spec.podSelector.matchExpressions[0].values",
                "spec.podSelector.matchExpressions[1].values",
                "spec.podSelector.matchExpressions[2].operator"
            ]
        );
        assert!(e[2].message.contains("\"Gt\""), "{}", e[2].message);
    }
}
