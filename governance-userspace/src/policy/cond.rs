//! Conditions on JSON documents: `$.amount > 100`, `$.items[0].sku == "X-1"`,
//! `$.query matches "DELETE*"`, `$.dry_run exists`.
//!
//! Grammar: `PATH OP VALUE` or `PATH exists`. PATH is `$` followed by `.name`, `["name"]` or
//! `[index]` steps. OP is one of `== != < <= > >= in contains matches`. VALUE is a JSON literal
//! (for `in`, a JSON array; for `matches`, a glob string). A condition on a missing field, or
//! comparing values of different types, is false.

use std::fmt;

use serde_json::Value;

/// One step of a path.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Contains,
    Matches,
    Exists,
}

/// A parsed condition.
#[derive(Clone, Debug, PartialEq)]
pub struct Condition {
    text: String,
    path: Vec<Step>,
    op: Op,
    value: Value,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Deepest path a condition may name (bounds work per request).
const MAX_STEPS: usize = 32;

impl std::str::FromStr for Condition {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let s = text.trim();
        let rest = s
            .strip_prefix('$')
            .ok_or("a condition starts with a JSON path `$...`, e.g. `$.amount > 100`")?;
        let (path, rest) = parse_path(rest)?;
        let rest = rest.trim_start();
        const OPS: [(&str, Op); 10] = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("<", Op::Lt),
            (">", Op::Gt),
            ("in ", Op::In),
            ("contains ", Op::Contains),
            ("matches ", Op::Matches),
            ("exists", Op::Exists),
        ];
        let (op, literal) = OPS
            .iter()
            .find_map(|(word, op)| rest.strip_prefix(word).map(|r| (*op, r.trim())))
            .ok_or_else(|| {
                format!(
                    "expected an operator (== != < <= > >= in contains matches exists) after the path, found `{rest}`"
                )
            })?;
        let value = if op == Op::Exists {
            if !literal.is_empty() {
                return Err(format!("nothing may follow `exists`, found `{literal}`"));
            }
            Value::Null
        } else {
            serde_json::from_str(literal).map_err(|e| {
                format!("`{literal}` is not a JSON value ({e}); strings need double quotes")
            })?
        };
        match (op, &value) {
            (Op::In, v) if !v.is_array() => return Err("`in` takes a JSON array".into()),
            (Op::Matches, v) if !v.is_string() => {
                return Err("`matches` takes a glob string".into());
            }
            (Op::Lt | Op::Le | Op::Gt | Op::Ge, v) if !(v.is_number() || v.is_string()) => {
                return Err("ordering compares numbers or strings".into());
            }
            _ => {}
        }
        Ok(Condition {
            text: s.to_owned(),
            path,
            op,
            value,
        })
    }
}

fn parse_path(mut s: &str) -> Result<(Vec<Step>, &str), String> {
    let mut steps = Vec::new();
    loop {
        if let Some(rest) = s.strip_prefix('.') {
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'))
                .unwrap_or(rest.len());
            if end == 0 {
                return Err("empty field name after `.` in the path".into());
            }
            steps.push(Step::Key(rest[..end].to_owned()));
            s = &rest[end..];
        } else if let Some(rest) = s.strip_prefix('[') {
            let end = rest.find(']').ok_or("unclosed `[` in the path")?;
            let inner = rest[..end].trim();
            if let Some(key) = inner.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
                steps.push(Step::Key(key.to_owned()));
            } else {
                let i = inner
                    .parse::<usize>()
                    .map_err(|_| format!("`[{inner}]` is neither an index nor a quoted key"))?;
                steps.push(Step::Index(i));
            }
            s = &rest[end + 1..];
        } else {
            break;
        }
        if steps.len() > MAX_STEPS {
            return Err(format!("paths are limited to {MAX_STEPS} steps"));
        }
    }
    Ok((steps, s))
}

impl Condition {
    /// The JSON path the condition looks at, as written (`$.items[0].sku`).
    pub fn path(&self) -> String {
        let mut out = String::from("$");
        for step in &self.path {
            match step {
                Step::Key(k)
                    if !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-') =>
                {
                    out.push('.');
                    out.push_str(k);
                }
                Step::Key(k) => {
                    out.push_str("[\"");
                    out.push_str(k);
                    out.push_str("\"]");
                }
                Step::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }

    /// The value at the condition's path in `doc`, if there is one.
    pub fn lookup<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        let mut v = doc;
        for step in &self.path {
            v = match step {
                Step::Key(k) => v.get(k.as_str()),
                Step::Index(i) => v.get(*i),
            }?;
        }
        Some(v)
    }

    /// Does the condition hold for `doc`?
    pub fn eval(&self, doc: &Value) -> bool {
        let Some(v) = self.lookup(doc) else {
            return false;
        };
        match self.op {
            Op::Exists => true,
            Op::Eq => equal(v, &self.value),
            Op::Ne => !equal(v, &self.value) && same_kind(v, &self.value),
            Op::Lt => order(v, &self.value).is_some_and(|o| o.is_lt()),
            Op::Le => order(v, &self.value).is_some_and(|o| o.is_le()),
            Op::Gt => order(v, &self.value).is_some_and(|o| o.is_gt()),
            Op::Ge => order(v, &self.value).is_some_and(|o| o.is_ge()),
            Op::In => self
                .value
                .as_array()
                .is_some_and(|list| list.iter().any(|x| equal(v, x))),
            Op::Contains => match (v, &self.value) {
                (Value::String(s), Value::String(needle)) => s.contains(needle.as_str()),
                (Value::Array(items), x) => items.iter().any(|i| equal(i, x)),
                _ => false,
            },
            Op::Matches => match (v, &self.value) {
                (Value::String(s), Value::String(glob)) => super::glob::simple(glob, s),
                _ => false,
            },
        }
    }
}

fn same_kind(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn equal(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(s: &str) -> Condition {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn evaluates_comparisons() {
        let doc = json!({"amount": 500, "currency": "usd", "items": [{"sku": "A-1"}], "tags": ["x"], "meta": {"a b": true}});
        assert!(c("$.amount > 100").eval(&doc));
        assert!(c("$.amount <= 500").eval(&doc));
        assert!(!c("$.amount < 500").eval(&doc));
        assert!(c("$.amount == 500.0").eval(&doc));
        assert!(c(r#"$.currency == "usd""#).eval(&doc));
        assert!(c(r#"$.currency != "eur""#).eval(&doc));
        assert!(c(r#"$.items[0].sku in ["A-1", "B-2"]"#).eval(&doc));
        assert!(c(r#"$.tags contains "x""#).eval(&doc));
        assert!(c(r#"$.currency matches "u*""#).eval(&doc));
        assert!(c(r#"$.meta["a b"] exists"#).eval(&doc));
        assert!(c("$ exists").eval(&doc));
    }

    #[test]
    fn missing_fields_and_type_mismatches_are_false() {
        let doc = json!({"amount": "500"});
        assert!(!c("$.amount > 100").eval(&doc));
        assert!(!c("$.missing == 1").eval(&doc));
        assert!(!c("$.missing != 1").eval(&doc));
        assert!(!c("$.amount != 1").eval(&doc));
        assert!(!c("$.amount[3] exists").eval(&doc));
    }

    #[test]
    fn rejects_bad_conditions_with_a_reason() {
        for (bad, why) in [
            ("amount > 1", "starts with a JSON path"),
            ("$.amount >> 1", "not a JSON value"),
            ("$.amount", "expected an operator"),
            ("$. > 1", "empty field name"),
            ("$.a[x] == 1", "neither an index"),
            ("$.a[0 == 1", "unclosed"),
            ("$.a == usd", "strings need double quotes"),
            ("$.a in 3", "`in` takes a JSON array"),
            ("$.a exists 3", "nothing may follow"),
            ("$.a > true", "ordering compares"),
        ] {
            let err = bad.parse::<Condition>().unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let deep = format!("${} exists", ".a".repeat(40));
        assert!(deep.parse::<Condition>().is_err());
    }
}

/// Property tests: random conditions and documents never panic, and comparisons agree with
/// each other.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[a-z0-9 *]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn literal() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i32>().prop_map(|n| n.to_string()),
            (-1000.0f64..1000.0).prop_map(|f| format!("{f:?}")),
            "[a-z]{0,4}".prop_map(|s| format!("\"{s}\"")),
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                "[a-c]".prop_map(|k| format!(".{k}")),
                (0usize..3).prop_map(|i| format!("[{i}]")),
            ],
            0..4,
        )
        .prop_map(|steps| format!("${}", steps.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,40}", doc in json()) {
            if let Ok(c) = text.parse::<Condition>() {
                let _ = c.eval(&doc);
                let _ = c.lookup(&doc);
                let _ = c.path();
            }
        }

        #[test]
        fn near_miss_syntax_never_panics(
            p in path(),
            op in "(==|!=|<=|>=|<|>|in|contains|matches|exists|=|!)",
            v in "[\\[\\]\"a-z0-9,.{}: -]{0,12}",
            doc in json(),
        ) {
            if let Ok(c) = format!("{p} {op} {v}").parse::<Condition>() {
                let _ = c.eval(&doc);
            }
        }

        #[test]
        fn order_comparisons_are_complementary(p in path(), x in literal(), doc in json()) {
            let gt: Condition = format!("{p} > {x}").parse().unwrap();
            let le: Condition = format!("{p} <= {x}").parse().unwrap();
            let lt: Condition = format!("{p} < {x}").parse().unwrap();
            let ge: Condition = format!("{p} >= {x}").parse().unwrap();
            prop_assert!(!(gt.eval(&doc) && le.eval(&doc)));
            prop_assert!(!(lt.eval(&doc) && ge.eval(&doc)));
            // Comparable values fall on exactly one side.
            if let Some(v) = gt.lookup(&doc)
                && order(v, &gt.value).is_some()
            {
                prop_assert!(gt.eval(&doc) ^ le.eval(&doc));
            }
        }

        #[test]
        fn equality_in_and_exists_agree(p in path(), x in literal(), doc in json()) {
            let eq: Condition = format!("{p} == {x}").parse().unwrap();
            let ne: Condition = format!("{p} != {x}").parse().unwrap();
            let isin: Condition = format!("{p} in [{x}]").parse().unwrap();
            let exists: Condition = format!("{p} exists").parse().unwrap();
            prop_assert!(!(eq.eval(&doc) && ne.eval(&doc)));
            prop_assert_eq!(eq.eval(&doc), isin.eval(&doc));
            if eq.eval(&doc) || ne.eval(&doc) {
                prop_assert!(exists.eval(&doc));
            }
            prop_assert_eq!(exists.eval(&doc), eq.lookup(&doc).is_some());
        }

        #[test]
        fn conditions_round_trip_through_their_text(p in path(), x in literal()) {
            let c: Condition = format!("{p} >= {x}").parse().unwrap();
            let again: Condition = c.to_string().parse().unwrap();
            prop_assert_eq!(&again, &c);
            prop_assert_eq!(c.path(), p);
        }
    }
}
