use super::*;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn requirement(key: &str, operator: &str, values: Option<&[&str]>) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: values.map(|values| values.iter().map(|v| v.to_string()).collect()),
    }
}

fn selector(
    match_labels: &[(&str, &str)],
    expressions: Vec<LabelSelectorRequirement>,
) -> LabelSelector {
    LabelSelector {
        match_labels: (!match_labels.is_empty())
            .then(|| match_labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    }
}

fn one(key: &str, operator: &str, values: Option<&[&str]>) -> LabelSelector {
    selector(&[], vec![requirement(key, operator, values)])
}

#[test]
fn empty_selector_matches_everything() {
    let empty = LabelSelector::default();
    assert!(matches(&empty, &labels(&[])).unwrap());
    assert!(matches(&empty, &labels(&[("app", "web")])).unwrap());
    // Present but empty lists and maps are still the empty selector.
    let explicit = LabelSelector {
        match_labels: Some(Default::default()),
        match_expressions: Some(vec![]),
    };
    assert!(matches(&explicit, &labels(&[("a", "b")])).unwrap());
}

#[test]
fn match_labels_need_every_pair() {
    let s = selector(&[("app", "web"), ("tier", "front")], vec![]);
    assert!(matches(
        &s,
        &labels(&[("app", "web"), ("tier", "front"), ("x", "y")])
    )
    .unwrap());
    assert!(!matches(&s, &labels(&[("app", "web")])).unwrap());
    assert!(!matches(&s, &labels(&[("app", "web"), ("tier", "back")])).unwrap());
    assert!(!matches(&s, &labels(&[])).unwrap());
}

#[test]
fn match_labels_with_empty_value_needs_the_key() {
    let s = selector(&[("canary", "")], vec![]);
    assert!(matches(&s, &labels(&[("canary", "")])).unwrap());
    assert!(!matches(&s, &labels(&[])).unwrap());
}

#[test]
fn matches_labels_helper() {
    assert!(matches_labels(&labels(&[]), &labels(&[("a", "b")])));
    assert!(matches_labels(
        &labels(&[("a", "b")]),
        &labels(&[("a", "b"), ("c", "d")])
    ));
    assert!(!matches_labels(
        &labels(&[("a", "b")]),
        &labels(&[("a", "c")])
    ));
}

#[test]
fn in_operator() {
    let s = one("env", "In", Some(&["prod", "staging"]));
    assert!(matches(&s, &labels(&[("env", "prod")])).unwrap());
    assert!(matches(&s, &labels(&[("env", "staging")])).unwrap());
    assert!(!matches(&s, &labels(&[("env", "dev")])).unwrap());
    assert!(!matches(&s, &labels(&[])).unwrap(), "In needs the key");
}

#[test]
fn not_in_operator_matches_absent_key() {
    let s = one("env", "NotIn", Some(&["prod"]));
    assert!(!matches(&s, &labels(&[("env", "prod")])).unwrap());
    assert!(matches(&s, &labels(&[("env", "dev")])).unwrap());
    assert!(
        matches(&s, &labels(&[])).unwrap(),
        "NotIn selects objects without the key"
    );
}

#[test]
fn exists_and_does_not_exist() {
    let exists = one("env", "Exists", None);
    assert!(matches(&exists, &labels(&[("env", "")])).unwrap());
    assert!(!matches(&exists, &labels(&[("other", "x")])).unwrap());
    let absent = one("env", "DoesNotExist", Some(&[]));
    assert!(!matches(&absent, &labels(&[("env", "x")])).unwrap());
    assert!(matches(&absent, &labels(&[])).unwrap());
}

#[test]
fn labels_and_expressions_are_anded() {
    let s = selector(
        &[("app", "web")],
        vec![
            requirement("env", "In", Some(&["prod"])),
            requirement("debug", "DoesNotExist", None),
        ],
    );
    assert!(matches(&s, &labels(&[("app", "web"), ("env", "prod")])).unwrap());
    assert!(!matches(
        &s,
        &labels(&[("app", "web"), ("env", "prod"), ("debug", "1")])
    )
    .unwrap());
    assert!(!matches(&s, &labels(&[("app", "db"), ("env", "prod")])).unwrap());
    assert!(!matches(&s, &labels(&[("app", "web")])).unwrap());
}

#[test]
fn in_and_not_in_need_values() {
    for operator in ["In", "NotIn"] {
        for values in [None, Some(&[][..])] {
            let error = matches(&one("env", operator, values), &labels(&[])).unwrap_err();
            assert!(
                matches!(error, SelectorError::MissingValues { .. }),
                "{error}"
            );
            let text = error.to_string();
            assert!(
                text.contains(operator) && text.contains("\"env\""),
                "{text}"
            );
            assert!(text.contains("matchExpressions[0]"), "{text}");
        }
    }
}

#[test]
fn exists_and_does_not_exist_take_no_values() {
    for operator in ["Exists", "DoesNotExist"] {
        let error = validate(&one("env", operator, Some(&["x"]))).unwrap_err();
        assert!(
            matches!(error, SelectorError::UnexpectedValues { count: 1, .. }),
            "{error}"
        );
        assert!(error.to_string().contains(operator), "{error}");
    }
}

#[test]
fn unknown_operator_is_an_error_even_when_labels_would_not_match() {
    // Operators are case-sensitive, and the label-query spellings are not selector operators.
    for operator in ["in", "Equals", "=", "!=", "Gt", ""] {
        let s = selector(
            &[("app", "web")],
            vec![requirement("env", operator, Some(&["1"]))],
        );
        let error = matches(&s, &labels(&[])).unwrap_err();
        assert!(
            matches!(error, SelectorError::UnknownOperator { .. }),
            "{operator}: {error}"
        );
        assert!(error.to_string().contains("\"env\""), "{error}");
    }
}

#[test]
fn second_expression_is_named() {
    let s = selector(
        &[],
        vec![
            requirement("a", "Exists", None),
            requirement("b", "Exists", Some(&["x"])),
        ],
    );
    assert!(validate(&s)
        .unwrap_err()
        .to_string()
        .contains("matchExpressions[1]"));
}

#[test]
fn keys_and_values_are_validated() {
    let good_keys = ["app", "app.kubernetes.io/name", "a-b_c.d", "x/y", "A1"];
    for key in good_keys {
        assert!(validate(&one(key, "Exists", None)).is_ok(), "{key}");
    }
    let bad_keys = [
        "",
        "-app",
        "app-",
        "a b",
        "/app",
        "UPPER.io/app",
        "a/b/c",
        "x/",
        &"k".repeat(64),
    ];
    for key in bad_keys {
        let error = validate(&one(key, "Exists", None)).unwrap_err();
        assert!(
            matches!(error, SelectorError::InvalidKey { .. }),
            "{key:?}: {error}"
        );
    }
    let error = validate(&selector(&[("bad key", "v")], vec![])).unwrap_err();
    assert!(error.to_string().contains("matchLabels"), "{error}");
    let error = validate(&selector(&[("app", "bad value")], vec![])).unwrap_err();
    assert!(
        matches!(error, SelectorError::InvalidValue { .. }),
        "{error}"
    );
    let error = validate(&one("app", "In", Some(&["ok", "-no"]))).unwrap_err();
    assert!(
        error.to_string().contains("matchExpressions[0].values[1]"),
        "{error}"
    );
    assert!(validate(&one("app", "In", Some(&["", "v.1_x-2"]))).is_ok());
}

#[test]
fn the_compact_selector_refuses_what_the_api_server_refuses() {
    let error = Selector::from_api(&selector(&[], vec![requirement("ok", "In", None), requirement("app", "Sometimes", None)])).unwrap_err();
    assert!(matches!(error, SelectorError::MissingValues { ref field, .. } if field == "matchExpressions[0]"), "{error}");
    let error = Selector::from_api(&one("app", "Sometimes", None)).unwrap_err();
    assert!(matches!(error, SelectorError::UnknownOperator { .. }), "{error}");
}
