//! Conditions on JSON documents: `$.amount > 100`, `$.items[0].sku == "X-1"`,
//! `$.query matches "DELETE*"`, `$.dry_run exists`.
//!
//! Grammar: `PATH OP VALUE` or `PATH exists`. PATH is `$` followed by `.name`, `["name"]` or
//! `[index]` steps. OP is one of `== != < <= > >= in contains matches`. VALUE is a JSON literal
//! (for `in`, a JSON array; for `matches`, a glob string). A condition on a missing field, or
//! comparing values of different types, is false.
//!
//! **Numbers spelled as strings.** Frameworks read `"5000"` as the number 5000 (pydantic in lax
//! mode, JavaScript comparisons), so against a numeric literal a string that is a plain decimal
//! number (`"5000"`, `" 5000 "`, `"+5000"`, `"5e3"`, `"5000.0"`) compares as that number.
//! Strings that readers disagree on (`"0x1388"`, `"5_000"`, `"05000"`, `""`, `"Infinity"`,
//! `"５０００"`, `"5000abc"`) are not decided on: [`Condition::ambiguity`] names them, and the
//! proxy refuses the request (see `proxy::canonical`).

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
    /// The [`READINGS`] a string is also compared in ([`Condition::holds`]), each with `value`
    /// in it: for strings (and lists of them), and only the readings that leave `value` as it
    /// is but for case (one that changed it would change the rule: `contains "\r\n"` read
    /// trimmed is `contains ""`).
    readings: Vec<(Reading, Value)>,
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
        let readings = if value.is_string() || value.is_array() {
            let folded = read_strings(&value, Reading::Folded);
            READINGS
                .iter()
                .map(|r| (*r, read_strings(&value, *r)))
                .filter(|(r, read)| matches!(r, Reading::Folded) || *read == folded)
                .collect()
        } else {
            Vec::new()
        };
        Ok(Condition {
            text: s.to_owned(),
            path,
            op,
            value,
            readings,
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

    /// Why `doc` could be read with its top-level members wrapped in one object, or unwrapped,
    /// where this condition looks, if it could. Rails' `ParamsWrapper` (on for JSON by
    /// default) copies a body's top-level members into `params[<controller>]` when the body has
    /// no member of that name, and scaffolded controllers read only that: so `{"amount": 1}` is
    /// `refund.amount` to a `RefundsController`, and `{"refund": {"amount": 1}}` holds the
    /// `amount` it acts on one level down. Ambiguous: a path `$.k…` whose `k` the body lacks at
    /// the top but has in an object one level down, and a path `$.w.k…` whose `w` the body
    /// lacks while it has `k` at the top (each in any spelling [`alike`] reads as it; red team
    /// round 21). For request bodies (an MCP tool's arguments are not wrapped).
    pub fn wrapped(&self, doc: &Value) -> Option<String> {
        let Value::Object(top) = doc else {
            return None;
        };
        let key = |i: usize| match self.path.get(i) {
            Some(Step::Key(k)) => Some(k.as_str()),
            _ => None,
        };
        let has = |map: &serde_json::Map<String, Value>, k: &str| map.keys().any(|x| alike(x, k));
        let first = key(0)?;
        // Held one level down too, with or without one at the top: where the body names the
        // controller's object, Rails does not wrap and reads the field inside it (round 23).
        if let Some((outer, _)) = top
            .iter()
            .find(|(_, v)| v.as_object().is_some_and(|inner| has(inner, first)))
        {
            return Some(format!(
                "`{}`: `{outer}` holds a `{first}` too, and Rails reads a body's members wrapped in an object of the controller's name",
                self.path()
            ));
        }
        if has(top, first) {
            return None;
        }
        let second = key(1)?;
        has(top, second).then(|| {
            format!(
                "`{}`: the body has no `{first}` but has `{second}` at the top, which Rails wraps in an object of the controller's name",
                self.path()
            )
        })
    }

    /// The value at the condition's path in `doc`, if there is one.
    pub fn lookup<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        walk(&self.path, doc)
    }

    /// Why `doc` could be read in more than one way where this condition looks, if it could
    /// (None: the condition's answer is what every reader would act on). A step to a key
    /// that the object also has in another case (`amount` and `Amount`; some frameworks match
    /// names case-insensitively), or that it has only in another case; an index into an object
    /// that has that key (`[0]` of `{"0": ...}`, as JavaScript reads it); and at the value:
    /// against a number, a string that is not a plain decimal number but has digits
    /// ([`numeric_string`]), null, a boolean, an array or an object (JavaScript and pydantic
    /// make numbers of them, or refuse them); against a boolean, anything but a boolean (read as
    /// true or false by JavaScript's truthiness, Python's `bool()`, pydantic: `"yes"`, `[]`);
    /// against a string, an array or an object (`["a"] == "a"` in JavaScript).
    pub fn ambiguity(&self, doc: &Value) -> Option<String> {
        let mut v = doc;
        for step in &self.path {
            v = match (step, v) {
                (Step::Key(k), Value::Object(map)) => {
                    let other = map.keys().find(|x| x.as_str() != k && alike(x, k));
                    if let Some(other) = other {
                        return Some(format!(
                            "`{}`: the body has the key `{other}`, which frameworks that match names loosely (in any case, without `_` or `-`) read as `{k}`",
                            self.path()
                        ));
                    }
                    map.get(k.as_str())?
                }
                (Step::Index(i), Value::Object(map)) => {
                    if map.contains_key(&i.to_string()) {
                        return Some(format!(
                            "`{}`: an object with the key \"{i}\" where the rule reads an array element",
                            self.path()
                        ));
                    }
                    return None;
                }
                (Step::Index(i), Value::Array(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        let path = self.path();
        let numeric = match self.op {
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge | Op::Contains => {
                self.value.is_number()
            }
            Op::In => self
                .value
                .as_array()
                .is_some_and(|l| l.iter().any(Value::is_number)),
            _ => false,
        };
        let boolean = match self.op {
            Op::Eq | Op::Ne => self.value.is_boolean(),
            Op::In => self
                .value
                .as_array()
                .is_some_and(|l| l.iter().any(Value::is_boolean)),
            _ => false,
        };
        let textual = match self.op {
            Op::Eq | Op::Ne | Op::Lt | Op::Le | Op::Gt | Op::Ge | Op::Matches => {
                self.value.is_string()
            }
            Op::In => self
                .value
                .as_array()
                .is_some_and(|l| l.iter().any(Value::is_string)),
            _ => false,
        };
        let values: Vec<&Value> = match (self.op, v) {
            (Op::Contains, Value::Array(items)) => items.iter().collect(),
            _ => vec![v],
        };
        for v in values {
            if numeric {
                match v {
                    Value::Number(n) => {
                        // An integer past 2^64 is a float to the parser: a whole one that
                        // large is an integer to Python and pydantic (red team round 9).
                        let beyond = match Num::of(n) {
                            Num::Int(i) => i.unsigned_abs() > MAX_SAFE_INTEGER,
                            Num::Float(f) => f.fract() == 0.0 && f.abs() > MAX_SAFE_INTEGER as f64,
                        };
                        if beyond {
                            return Some(format!("`{path}` is {n}, {BEYOND_SAFE}"));
                        }
                    }
                    Value::String(s) => match numeric_string(s) {
                        NumericString::Ambiguous(why) => {
                            return Some(format!(
                                "`{path}` is the string {s:?} where the rule compares a number: {why}"
                            ));
                        }
                        NumericString::Decimal(Num::Int(i))
                            if i.unsigned_abs() > MAX_SAFE_INTEGER =>
                        {
                            return Some(format!("`{path}` is the string {s:?}, {BEYOND_SAFE}"));
                        }
                        _ => {}
                    },
                    Value::Array(_) | Value::Object(_) if self.op == Op::Contains => {}
                    other => {
                        return Some(format!(
                            "`{path}` is {} where the rule compares a number",
                            kind_name(other)
                        ));
                    }
                }
            }
            // JavaScript's `if (x)` and Python's `bool()` make true or false of any value
            // (`[]`, `"no"`, `-1`), pydantic of `"yes"` and `0`: only a boolean is one reading
            // (red team round 35: `[false]` passed a block on `== true` that Express acted on).
            if boolean && !v.is_boolean() {
                return Some(format!(
                    "`{path}` is {} where the rule compares a boolean (frameworks read other values as true or false)",
                    kind_name(v)
                ));
            }
            if textual && self.op != Op::Contains && matches!(v, Value::Array(_) | Value::Object(_))
            {
                return Some(format!(
                    "`{path}` is {} where the rule compares a string",
                    kind_name(v)
                ));
            }
        }
        None
    }

    /// Why an MCP tool's `arguments` could be read in more than one way where this condition
    /// looks, beyond [`Condition::ambiguity`]: the MCP Python SDK parses a string argument of a
    /// parameter that is not typed `str` as JSON before the tool sees it (`pre_parse_json`), so
    /// `{"payment": "{\"amount\": 5000}"}` reaches the tool as an object. A string on the
    /// condition's way that holds JSON is refused when the condition answers differently on
    /// the string and on what it spells.
    pub fn json_text_ambiguity(&self, args: &Value) -> Option<String> {
        let mut v = args;
        for (i, step) in self.path.iter().enumerate() {
            let next = match (step, v) {
                (Step::Key(k), Value::Object(map)) => map.get(k.as_str()),
                (Step::Index(i), Value::Array(items)) => items.get(*i),
                (_, Value::String(s)) => {
                    // The condition reads into a string: nothing on the string itself, but
                    // perhaps something on the JSON it holds.
                    let parsed = match json_text(s) {
                        JsonText::No => return None,
                        JsonText::Yes(v) => v,
                        JsonText::Unreadable => return Some(self.unreadable_json_text()),
                    };
                    let holds = walk(&self.path[i..], &parsed).is_some_and(|x| self.test(x));
                    return holds.then(|| {
                        format!(
                            "`{}` reads into a string that holds JSON, which the MCP SDK parses before the tool reads it",
                            self.path()
                        )
                    });
                }
                _ => None,
            };
            v = next?;
        }
        let Value::String(s) = v else {
            return None;
        };
        let parsed = match json_text(s) {
            JsonText::No => return None,
            JsonText::Yes(v) => v,
            JsonText::Unreadable => return Some(self.unreadable_json_text()),
        };
        (self.test(v) != self.test(&parsed)).then(|| {
            format!(
                "`{}` is a string that holds JSON ({}), which the MCP SDK parses before the tool reads it, and the rule answers differently on the two",
                self.path(),
                kind_name(&parsed)
            )
        })
    }

    fn unreadable_json_text(&self) -> String {
        format!(
            "`{}` reads a string holding text that the MCP SDK may parse as JSON (NaN, Infinity, an out-of-range number, a lone surrogate, deep nesting) and the proxy cannot",
            self.path()
        )
    }

    /// Whether the condition compares the value with a number (`> 100`, `in [1, 2]`).
    pub fn numeric(&self) -> bool {
        match &self.value {
            Value::Number(_) => true,
            Value::Array(l) => l.iter().any(Value::is_number),
            _ => false,
        }
    }

    /// The first key of the condition's path (`amount` of `$.amount.value`), if it starts with
    /// one.
    pub fn top_key(&self) -> Option<&str> {
        match self.path.first()? {
            Step::Key(k) => Some(k),
            Step::Index(_) => None,
        }
    }

    /// Whether the path starts with an index (`$[0]...`): the document is an array.
    pub fn reads_array(&self) -> bool {
        matches!(self.path.first(), Some(Step::Index(_)))
    }

    /// Write into `doc` a value at the condition's path that makes it hold (objects and arrays
    /// made on the way; what was there is replaced), for a drill's synthesised request. False
    /// when no value is found (`< ""`, a path through a value of another kind). The caller
    /// checks the result with [`Condition::eval`]: a glob instance, say, is a best guess.
    pub fn satisfy(&self, doc: &mut Value) -> bool {
        let Some(value) = self.example() else {
            return false;
        };
        let mut v = doc;
        for step in &self.path {
            v = match step {
                Step::Key(k) => {
                    if !v.is_object() {
                        *v = Value::Object(Default::default());
                    }
                    let Value::Object(map) = v else { return false };
                    map.entry(k.clone()).or_insert(Value::Null)
                }
                Step::Index(i) => {
                    if !v.is_array() {
                        *v = Value::Array(Vec::new());
                    }
                    let Value::Array(items) = v else { return false };
                    if items.len() <= *i {
                        items.resize(i + 1, Value::Null);
                    }
                    &mut items[*i]
                }
            };
        }
        *v = value;
        true
    }

    /// A value for which the condition holds, if one is easily found.
    fn example(&self) -> Option<Value> {
        let step = |n: &serde_json::Number, up: bool| -> Option<Value> {
            let d = if up { 1 } else { -1 };
            match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => i.checked_add(d).map(Value::from),
                (None, Some(f)) => serde_json::Number::from_f64(f + d as f64).map(Value::Number),
                _ => None,
            }
        };
        let v = &self.value;
        match (self.op, v) {
            (Op::Exists, _) => Some(Value::Bool(true)),
            (Op::Eq | Op::Le | Op::Ge, _) => Some(v.clone()),
            (Op::Ne | Op::Gt, Value::Number(n)) => step(n, true),
            (Op::Lt, Value::Number(n)) => step(n, false),
            (Op::Ne | Op::Gt, Value::String(s)) => Some(Value::String(format!("{s}~"))),
            (Op::Lt, Value::String(s)) if !s.is_empty() => Some(Value::String(String::new())),
            (Op::Ne, Value::Bool(b)) => Some(Value::Bool(!b)),
            (Op::In, Value::Array(list)) => list.first().cloned(),
            (Op::Contains, Value::String(_)) => Some(v.clone()),
            (Op::Contains, _) => Some(Value::Array(vec![v.clone()])),
            (Op::Matches, Value::String(glob)) => {
                Some(Value::String(glob.replace('*', "drill").replace('?', "x")))
            }
            _ => None,
        }
    }

    /// Does the condition hold for `doc`?
    pub fn eval(&self, doc: &Value) -> bool {
        self.holds(doc, false)
    }

    /// [`Condition::eval`] as a rule that restricts (`restricts`) or allows reads the document.
    /// An upstream may read a string otherwise than it is spelt: `HTTP://x` as `http://x`,
    /// `DROP TABLE` as `drop table`, ` http://x` or `http:\\x` as `http://x` (URL parsers),
    /// `drop\ntable` as `drop table` (SQL, shells), ` production ` as `production` (a server
    /// that trims). So a rule that restricts holds when its condition holds in any of the
    /// [`READINGS`] (or as spelt), and a `!=` of a rule that allows only when it holds in every
    /// one (red team round 32: `" http://…"` passed a `matches "http://*"` sandbox rule, and
    /// `"Production"` an allow on `!= "production"`). An ordering of strings is read both ways
    /// too (`" 2099"` sorts before `"2025"` as spelt). The other operators of an allow rule
    /// hold as spelt: a reading makes them hold more often, never less.
    ///
    /// A restricting `contains` of a string also reads an array as the text JavaScript makes of
    /// it (`${q}` joins the elements with `,`; an element containing the string is in it), and an
    /// object as the list of its keys (Python's `in` on a dict; red team round 35:
    /// `["drop table t"]` and `{"admin": 1}` passed blocks on `contains "drop"` and `"admin"`).
    pub fn holds(&self, doc: &Value, restricts: bool) -> bool {
        self.lookup(doc).is_some_and(|v| {
            let loose = restricts && self.op == Op::Contains;
            let keys;
            let v = match v {
                Value::Object(map) if loose => {
                    keys = Value::Array(map.keys().cloned().map(Value::String).collect());
                    &keys
                }
                _ => v,
            };
            let test = |v: &Value, literal: &Value| {
                self.test_with(v, literal)
                    || (loose
                        && matches!((v, literal), (Value::Array(_), Value::String(needle))
                            if js_text(v).contains(needle.as_str())))
            };
            let exact = test(v, &self.value);
            let mut read = self
                .readings
                .iter()
                .map(|(r, literal)| test(&read_strings(v, *r), literal));
            match (restricts, self.op) {
                (true, Op::Ne) | (false, Op::Eq | Op::In | Op::Contains | Op::Matches) => exact,
                (true, _) => exact || read.any(|holds| holds),
                (false, _) => exact && read.all(|holds| holds),
            }
        })
    }

    /// The condition on the value at its path.
    fn test(&self, v: &Value) -> bool {
        self.test_with(v, &self.value)
    }

    /// The condition's operator on `v` against `literal` (its value, or that in a reading).
    fn test_with(&self, v: &Value, literal: &Value) -> bool {
        match self.op {
            Op::Exists => true,
            Op::Eq => equal(v, literal),
            Op::Ne => match literal {
                Value::Number(_) => number(v).is_some() && !equal(v, literal),
                lit => !equal(v, lit) && same_kind(v, lit),
            },
            Op::Lt => order(v, literal).is_some_and(|o| o.is_lt()),
            Op::Le => order(v, literal).is_some_and(|o| o.is_le()),
            Op::Gt => order(v, literal).is_some_and(|o| o.is_gt()),
            Op::Ge => order(v, literal).is_some_and(|o| o.is_ge()),
            Op::In => literal
                .as_array()
                .is_some_and(|list| list.iter().any(|x| equal(v, x))),
            Op::Contains => match (v, literal) {
                (Value::String(s), Value::String(needle)) => s.contains(needle.as_str()),
                (Value::Array(items), x) => items.iter().any(|i| equal(i, x)),
                _ => false,
            },
            Op::Matches => match (v, literal) {
                (Value::String(s), Value::String(glob)) => super::glob::simple(glob, s),
                _ => false,
            },
        }
    }
}

/// `v` as JavaScript's `String(v)` spells it: an array's elements joined with `,` (null as
/// nothing, nested arrays alike), an object as `[object Object]`.
fn js_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(js_text).collect::<Vec<_>>().join(","),
        Value::Object(_) => "[object Object]".into(),
        other => other.to_string(),
    }
}

fn same_kind(a: &Value, b: &Value) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// `a` (from the document) equals `b` (the literal). Against a number, a decimal string in the
/// document counts as the number it spells.
fn equal(a: &Value, b: &Value) -> bool {
    match b {
        Value::Number(y) => number(a).is_some_and(|x| x.cmp(Num::of(y)).is_some_and(|o| o.is_eq())),
        _ => a == b,
    }
}

/// `a` (from the document) ordered against `b` (the literal); None when they do not compare.
fn order(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (_, Value::Number(y)) => number(a)?.cmp(Num::of(y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

/// The ASCII letter whose case a character outside ASCII is: the Kelvin sign (k), the long s
/// (S), the dotless i (I) and the capital I with a dot (i). Routers and binders that ignore
/// case read them as those letters.
pub fn ascii_case_of(c: char) -> Option<char> {
    match c {
        '\u{212a}' => Some('k'),
        '\u{17f}' => Some('s'),
        '\u{131}' | '\u{130}' => Some('i'),
        _ => None,
    }
}

/// Whether two names are one to the binders that match names the most loosely: in any case
/// ([`ascii_case_of`] included: Go's `encoding/json` folds the Kelvin sign to `k`, .NET's
/// case-insensitive binding the long s to `S`; red team round 9), and with `_` and `-` ignored
/// (Go's `case:ignore`, camelCase alias generators: `dryRun` is `dry_run`).
pub fn alike(a: &str, b: &str) -> bool {
    let loose = |s: &str| {
        s.chars()
            .filter(|c| !matches!(c, '_' | '-'))
            .map(|c| ascii_case_of(c).unwrap_or(c.to_ascii_lowercase()))
            .collect::<Vec<char>>()
    };
    loose(a) == loose(b)
}

/// A number, exact for integers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Num {
    Int(i128),
    Float(f64),
}

impl Num {
    fn of(n: &serde_json::Number) -> Num {
        if let Some(i) = n.as_i64() {
            Num::Int(i128::from(i))
        } else if let Some(u) = n.as_u64() {
            Num::Int(i128::from(u))
        } else {
            Num::Float(n.as_f64().unwrap_or(f64::NAN))
        }
    }

    fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }

    fn cmp(self, other: Num) -> Option<std::cmp::Ordering> {
        match (self, other) {
            (Num::Int(a), Num::Int(b)) => Some(a.cmp(&b)),
            (a, b) => a.as_f64().partial_cmp(&b.as_f64()),
        }
    }
}

/// The number a document value stands for: a JSON number, or a string that is a plain decimal
/// number ([`numeric_string`]).
fn number(v: &Value) -> Option<Num> {
    match v {
        Value::Number(n) => Some(Num::of(n)),
        Value::String(s) => match numeric_string(s) {
            NumericString::Decimal(n) => Some(n),
            _ => None,
        },
        _ => None,
    }
}

/// The largest integer every JSON reader takes exactly: JavaScript's numbers are doubles, so
/// `9007199254740993` is `9007199254740992` to Express and itself to Python.
const MAX_SAFE_INTEGER: u128 = 1 << 53;
const BEYOND_SAFE: &str = "an integer beyond 2^53, which JavaScript rounds and Python does not";

/// How a string reads as a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NumericString {
    /// A plain decimal number (surrounding whitespace allowed): every reader that takes it as a
    /// number takes it as this one.
    Decimal(Num),
    /// No reader makes a number of it (no digits, not empty, not infinity or NaN).
    NotANumber,
    /// Some readers make a number of it and others do not, or make another number; why.
    Ambiguous(&'static str),
}

/// Classify a string compared with a number. Decimal: `[+-]?(0|[1-9][0-9]*)(.[0-9]*)?([eE][+-]?[0-9]+)?`
/// (or `.5`), finite, after trimming whitespace. Ambiguous: empty or blank (JavaScript reads 0),
/// leading zeros (octal to some readers), `0x`/`0o`/`0b` prefixes and `_` separators (JavaScript or
/// Python read them), infinity and NaN, non-ASCII digits (Python's `int()` reads `"５０００"`),
/// and anything else with a digit in it (`parseInt("5000abc")` is 5000).
pub fn numeric_string(s: &str) -> NumericString {
    use NumericString::{Ambiguous, Decimal, NotANumber};
    let t = s.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
    if t.is_empty() {
        return Ambiguous("an empty string reads as 0 in JavaScript");
    }
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    let lower = unsigned.to_ascii_lowercase();
    if lower.starts_with("inf") || lower.starts_with("nan") {
        return Ambiguous("infinity and NaN are numbers to some readers");
    }
    if !t.chars().any(char::is_numeric) {
        return NotANumber;
    }
    let b = unsigned.as_bytes();
    let int_len = b.iter().take_while(|c| c.is_ascii_digit()).count();
    let mut i = int_len;
    let mut frac_len = 0;
    let mut fractional = false;
    if b.get(i) == Some(&b'.') {
        fractional = true;
        i += 1;
        frac_len = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
        i += frac_len;
    }
    let mut exponent = false;
    if matches!(b.get(i), Some(b'e' | b'E')) && int_len + frac_len > 0 {
        let mut j = i + 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        let digits = b[j.min(b.len())..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits > 0 {
            exponent = true;
            i = j + digits;
        }
    }
    if i != b.len() || int_len + frac_len == 0 {
        return Ambiguous("not a plain decimal number, but it has digits");
    }
    if int_len > 1 && b[0] == b'0' {
        return Ambiguous("leading zeros (octal to some readers)");
    }
    if !fractional
        && !exponent
        && let Ok(n) = t.trim_start_matches('+').parse::<i128>()
    {
        return Decimal(Num::Int(n));
    }
    match t.trim_start_matches('+').parse::<f64>() {
        Ok(f) if f.is_finite() && f.fract() == 0.0 && f.abs() > MAX_SAFE_INTEGER as f64 => {
            // `"9007199254740993.0"`: 9007199254740993 to Python's `int()` and pydantic.
            Ambiguous("a whole number beyond 2^53, which JavaScript rounds and Python does not")
        }
        Ok(f) if !is_double(t, f) => Ambiguous(INEXACT),
        Ok(f) if f.is_finite() => Decimal(Num::Float(f)),
        _ => Ambiguous("out of range"),
    }
}

/// Why a decimal with more digits than a double holds is refused where a rule compares it.
pub const INEXACT: &str = "more digits than a double holds: readers of doubles (JavaScript, Python's float) round it, readers of decimals (pydantic's Decimal, BigDecimal) do not";

/// Whether the plain decimal number `text` (as JSON writes numbers; a `+` allowed) is exactly the
/// double it parses to: `0.1` and `0.30000000000000004` are (a double's shortest spelling),
/// `100.000000000000001` is not (100 as a double, above 100 as a decimal; red team round 22).
pub fn exact_as_double(text: &str) -> bool {
    let t = text.trim();
    t.trim_start_matches('+')
        .parse::<f64>()
        .is_ok_and(|f| is_double(t, f))
}

/// [`exact_as_double`], with `f` the double `t` parses to.
fn is_double(t: &str, f: f64) -> bool {
    f.is_finite() && decimal_parts(t) == decimal_parts(&format!("{f:e}"))
}

/// A plain decimal number's sign, significant digits (no leading or trailing zeros) and the
/// power of ten of its last digit; zero is `(false, "", 0)`. An exponent past `i64` reads as 0
/// (such a number is no double: [`exact_as_double`] refuses it first).
fn decimal_parts(t: &str) -> (bool, String, i64) {
    let (negative, t) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.trim_start_matches('+')),
    };
    let (mantissa, exponent) = match t.find(['e', 'E']) {
        Some(i) => (&t[..i], t[i + 1..].parse::<i64>().unwrap_or(0)),
        None => (t, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int}{frac}");
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    if significant.is_empty() {
        return (false, String::new(), 0);
    }
    let trailing = digits.len() - digits.trim_end_matches('0').len();
    let last = exponent
        .saturating_sub(i64::try_from(frac.len()).unwrap_or(i64::MAX))
        .saturating_add(i64::try_from(trailing).unwrap_or(0));
    (negative, significant.to_owned(), last)
}

/// The value at `steps` in `doc`, if there is one.
fn walk<'a>(steps: &[Step], doc: &'a Value) -> Option<&'a Value> {
    let mut v = doc;
    for step in steps {
        v = match step {
            Step::Key(k) => v.get(k.as_str()),
            Step::Index(i) => v.get(*i),
        }?;
    }
    Some(v)
}

/// How an upstream may read a string besides as it is spelt ([`Condition::holds`]); each
/// reading is applied to the document's string and to the rule's literal alike.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reading {
    /// In any case ([`fold`]).
    Folded,
    /// Folded, without the whitespace, control characters and byte-order marks at either end
    /// (servers that trim; URL parsers strip C0 controls and spaces).
    Trimmed,
    /// Trimmed, without tabs and line breaks anywhere, and a special URL scheme's `:` followed
    /// by `//` whatever slashes or backslashes it was followed by (WHATWG URL parsers, as
    /// Node's `fetch` uses: `http:\\x`, `http:/x` and `ht\ttp://x` are `http://x`).
    Url,
    /// Trimmed, each run of whitespace and control characters one space (SQL, shells).
    Spaced,
}

const READINGS: [Reading; 4] = [
    Reading::Folded,
    Reading::Trimmed,
    Reading::Url,
    Reading::Spaced,
];

/// `v` with every string in it (not object keys) read as `reading` does.
fn read_strings(v: &Value, reading: Reading) -> Value {
    match v {
        Value::String(s) => Value::String(read(s, reading)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|i| read_strings(i, reading)).collect())
        }
        other => other.clone(),
    }
}

/// `s` in lower case as upstreams compare without case: the four letters that simple case
/// mappings turn into ASCII ones as those ([`ascii_case_of`]: Python's and JavaScript's
/// `upper()`/`lower()`, Java's `equalsIgnoreCase` read `dısable` as `disable` and `\u{212a}ill`
/// as `kill`; red team round 33), and any other letter lowered, raised and lowered again, so
/// that the full mappings of `upper()` apply (`ß` and `ẞ` are `ss`, the ligature `ﬁ` is `fi`:
/// `"ﬁle_delete".upper()` is `FILE_DELETE`; red team round 35).
pub fn fold(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match ascii_case_of(c) {
            Some(a) => out.push(a),
            None if c.is_ascii() => out.push(c.to_ascii_lowercase()),
            None => out.extend(
                c.to_lowercase()
                    .flat_map(char::to_uppercase)
                    .flat_map(char::to_lowercase),
            ),
        }
    }
    out
}

fn read(s: &str, reading: Reading) -> String {
    let noise = |c: char| c.is_whitespace() || c.is_control() || c == '\u{feff}';
    let folded = fold(s);
    let trimmed = folded.trim_matches(noise);
    match reading {
        Reading::Folded => folded,
        Reading::Trimmed => trimmed.to_owned(),
        Reading::Url => {
            let joined: String = trimmed
                .chars()
                .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
                .collect();
            const SPECIAL: [&str; 6] = ["http:", "https:", "ws:", "wss:", "ftp:", "file:"];
            match SPECIAL.iter().find(|s| joined.starts_with(**s)) {
                Some(scheme) => {
                    let rest = joined[scheme.len()..].trim_start_matches(['/', '\\']);
                    format!("{scheme}//{}", rest.replace('\\', "/"))
                }
                None => joined,
            }
        }
        Reading::Spaced => {
            let mut out = String::with_capacity(trimmed.len());
            for word in trimmed.split(noise).filter(|w| !w.is_empty()) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(word);
            }
            out
        }
    }
}

/// What the MCP Python SDK makes of a string argument before a tool whose parameter is not a
/// `str` reads it (`json.loads`, keeping what is not a number or a string).
enum JsonText {
    /// It stays a string for every parameter.
    No,
    /// The object, array, boolean or null it spells as JSON.
    Yes(Value),
    /// Text that Python's `json` may parse and the proxy's strict parser does not: `NaN` and
    /// `Infinity`, a number beyond a double's range, a lone surrogate escape, nesting deeper
    /// than the parser's limit. Whole-value text only (an object or array from end to end,
    /// as `json.loads` needs), so prose that starts with a bracket stays a string.
    Unreadable,
}

fn json_text(s: &str) -> JsonText {
    // JSON's (and Python's `json`'s) whitespace, no other.
    let t = s.trim_matches([' ', '\t', '\n', '\r']);
    if !t.starts_with(['{', '[', 't', 'f', 'n']) {
        return JsonText::No;
    }
    match serde_json::from_str::<Value>(t) {
        Ok(v @ (Value::Object(_) | Value::Array(_) | Value::Bool(_) | Value::Null)) => {
            JsonText::Yes(v)
        }
        Ok(_) => JsonText::No,
        Err(_)
            if (t.starts_with('{') && t.ends_with('}'))
                || (t.starts_with('[') && t.ends_with(']')) =>
        {
            JsonText::Unreadable
        }
        Err(_) => JsonText::No,
    }
}

/// What a JSON value is, for messages (`a string`, `an object`, ...).
pub(crate) fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
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

    /// Red team round 9: what binders read as the rule's key (Go folds the Kelvin sign and
    /// the long s, alias generators drop `_`), integers past 2^64 (floats to the parser, exact
    /// integers to Python), and decimals just past a bound (rounded to it by a fast parser).
    #[test]
    fn loose_names_huge_integers_and_close_decimals() {
        let age = c("$.customer_age_days < 7");
        for body in [
            r#"{"customer_age_days": 400, "customer_age_day\u017f": 1}"#,
            r#"{"customer_age_days": 400, "CUSTOMER_AGE_DAY\u017f": 1}"#,
            r#"{"customer_age_days": 400, "customerAgeDays": 1}"#,
            r#"{"customer_age_days": 400, "customer-age-days": 1}"#,
            r#"{"cu\u017ftomer_age_days": 1}"#,
        ] {
            let doc: Value = serde_json::from_str(body).unwrap();
            assert!(age.ambiguity(&doc).is_some(), "{body}");
        }
        let plain: Value = serde_json::from_str(r#"{"customer_age_days": 400}"#).unwrap();
        assert_eq!(age.ambiguity(&plain), None);
        let id = c("$.account_id == 18446744073709551616");
        let huge: Value = serde_json::from_str(r#"{"account_id": 18446744073709551617}"#).unwrap();
        assert!(id.ambiguity(&huge).is_some());
        let small = c("$.amount <= 100");
        let close: Value = serde_json::from_str(r#"{"amount": 100.00000000000001}"#).unwrap();
        assert!(
            !small.eval(&close),
            "read as above 100, as Python and JavaScript read it"
        );
        assert!(alike("dry_run", "DryRun") && !alike("dry_run", "dry_runs"));
        assert!(alike("task", "tas\u{212a}") && alike("id", "\u{131}d"));
    }

    #[test]
    fn missing_fields_and_type_mismatches_are_false() {
        let doc = json!({"amount": "five", "flag": true});
        assert!(!c("$.amount > 100").eval(&doc));
        assert!(!c("$.missing == 1").eval(&doc));
        assert!(!c("$.missing != 1").eval(&doc));
        assert!(!c("$.amount != 1").eval(&doc));
        assert!(!c("$.amount[3] exists").eval(&doc));
        assert!(!c("$.flag > 0").eval(&doc));
        assert!(!c(r#"$.flag == "true""#).eval(&doc));
    }

    #[test]
    fn decimal_strings_compare_as_numbers() {
        for spelled in ["500", " 500 ", "+500", "5e2", "500.0", "0.5e3", "500."] {
            let doc = json!({ "amount": spelled });
            assert!(c("$.amount > 100").eval(&doc), "{spelled}");
            assert!(c("$.amount == 500").eval(&doc), "{spelled}");
            assert!(c("$.amount in [1, 500]").eval(&doc), "{spelled}");
            assert!(!c("$.amount != 500").eval(&doc), "{spelled}");
            assert!(!c("$.amount <= 100").eval(&doc), "{spelled}");
            assert_eq!(c("$.amount > 100").ambiguity(&doc), None, "{spelled}");
        }
        assert!(c("$.ids contains 5").eval(&json!({"ids": ["5"]})));
        // Integers compare exactly, past what a double holds.
        let big = json!({"n": 9007199254740993u64});
        assert!(c("$.n > 9007199254740992").eval(&big));
        assert!(c("$.n > 9007199254740992").eval(&json!({"n": "9007199254740993"})));
        // A string never equals a number that is not the one it spells.
        assert!(!c("$.amount == 500").eval(&json!({"amount": "5000"})));
        assert!(c("$.amount != 500").eval(&json!({"amount": "5000"})));
    }

    #[test]
    fn ambiguous_readings_are_named() {
        for spelled in [
            "0x1F4",
            "5_00",
            "0500",
            "",
            "  ",
            "Infinity",
            "-inf",
            "NaN",
            "５００",
            "500abc",
            "1,000",
            "1e999",
        ] {
            let doc = json!({ "amount": spelled });
            let why = c("$.amount > 100").ambiguity(&doc);
            assert!(why.is_some(), "{spelled:?}");
            assert!(!c("$.amount > 100").eval(&doc), "{spelled:?}");
            assert!(!c("$.amount <= 100").eval(&doc), "{spelled:?}");
        }
        assert_eq!(numeric_string("abc"), NumericString::NotANumber);
        assert_eq!(
            c("$.amount > 100").ambiguity(&json!({"amount": "abc"})),
            None
        );
        for doc in [
            json!({"amount": true}),
            json!({"amount": [500]}),
            json!({"amount": {"v": 500}}),
            json!({"amount": 5, "Amount": 500}),
            json!({"AMOUNT": 500}),
        ] {
            assert!(c("$.amount > 100").ambiguity(&doc).is_some(), "{doc}");
        }
        assert!(
            c("$.dry_run == true")
                .ambiguity(&json!({"dry_run": "yes"}))
                .is_some()
        );
        assert!(
            c("$.dry_run == true")
                .ambiguity(&json!({"dry_run": 1}))
                .is_some()
        );
        assert!(
            c(r#"$.sql matches "DELETE *""#)
                .ambiguity(&json!({"sql": ["DELETE x"]}))
                .is_some()
        );
        assert!(
            c("$.items[0] exists")
                .ambiguity(&json!({"items": {"0": 1}}))
                .is_some()
        );
        // null is 0 to JavaScript and an error to pydantic.
        assert!(
            c("$.amount > 100")
                .ambiguity(&json!({"amount": null}))
                .is_some()
        );
        // Missing fields and plain values are not ambiguous.
        assert_eq!(c("$.amount > 100").ambiguity(&json!({})), None);
        assert_eq!(
            c(r#"$.tags contains "x""#).ambiguity(&json!({"tags": ["x"]})),
            None
        );
    }

    /// What the MCP Python SDK's `json.loads` makes of a string argument: JSON it spells (an
    /// object, array, boolean or null), a string still (numbers, strings, prose), or text that
    /// Python reads and serde_json does not, from end to end an object or array.
    #[test]
    fn json_text_reads_what_python_reads_and_names_what_it_cannot() {
        let yes = |s: &str| match json_text(s) {
            JsonText::Yes(v) => v,
            JsonText::No => panic!("{s:?}: read as a string"),
            JsonText::Unreadable => panic!("{s:?}: unreadable"),
        };
        assert_eq!(yes(r#"{"a": 1}"#), json!({"a": 1}));
        assert_eq!(yes(" \t[1, 2]\r\n"), json!([1, 2]));
        assert_eq!(yes("true"), json!(true));
        assert_eq!(yes("null"), json!(null));
        for s in [
            "5",
            "1e400",
            r#""x""#,
            "NaN",
            "Infinity",
            "nope",
            "",
            "[WIP] fix",
            "{draft} reply",
            "[1] and [2",
            "\u{a0}[1]",
            "\u{feff}[1]",
        ] {
            assert!(matches!(json_text(s), JsonText::No), "{s:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for s in [
            r#"{"a": NaN}"#,
            "[Infinity]",
            "[-Infinity]",
            r#"{"a": 1e400}"#,
            r#"["\ud800"]"#,
            r#"{"a": "\udc00x"}"#,
            " {\"a\": NaN}\n",
            &deep,
        ] {
            assert!(matches!(json_text(s), JsonText::Unreadable), "{s:?}");
        }
    }

    /// A condition reading text it cannot parse is ambiguous; one reading prose is not
    /// (the red team's round 2 arguments).
    #[test]
    fn unreadable_json_text_is_ambiguous_where_a_condition_reads_it() {
        let amount = c("$.payment.amount > 1000");
        let why = amount
            .json_text_ambiguity(&json!({"payment": r#"{"amount": 5000, "to": "x", "pad": NaN}"#}))
            .expect("NaN text is ambiguous");
        assert!(why.contains("`$.payment.amount`"), "{why}");
        let ceo = c(r#"$.recipients contains "ceo@corp.example""#);
        assert!(
            ceo.json_text_ambiguity(
                &json!({"recipients": r#"["ceo@corp.exampl\u0065", "\ud800"]"#})
            )
            .is_some()
        );
        // Controls.
        assert_eq!(
            amount.json_text_ambiguity(&json!({"payment": r#"{"amount": 5}"#})),
            None
        );
        assert_eq!(
            amount.json_text_ambiguity(&json!({"payment": {"amount": 5}, "memo": "[NaN]"})),
            None
        );
        assert_eq!(
            ceo.json_text_ambiguity(&json!({"recipients": "[WIP] fix"})),
            None
        );
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

    /// A string whose readings fall on both sides of a literal (`" b"` sorts before `"a"` as
    /// spelt and after it trimmed) is on both sides to a rule that restricts and on neither to
    /// an allow (found by `order_comparisons_are_complementary`, which had asked for one side).
    #[test]
    fn an_ordering_read_two_ways_restricts_both_ways_and_allows_neither() {
        let doc = json!([[" b"]]);
        for text in [r#"$[0][0] > "a""#, r#"$[0][0] <= "a""#] {
            let cond = c(text);
            assert!(cond.holds(&doc, true), "{text} restricts");
            assert!(!cond.eval(&doc), "{text} allows");
        }
    }

    /// Red team round 32: upstreams read strings trimmed, with URL parsers' leniency and with
    /// whitespace runs as one; a rule that restricts holds in any of those readings, an allow's
    /// `!=` only in all of them.
    #[test]
    fn strings_are_read_as_upstreams_read_them() {
        let doc = |v: &str| json!({ "url": v, "env": v, "sql": v });
        let doc_until = |v: &str| json!({ "until": v });
        let sandboxed = c(r#"$.url matches "http://*""#);
        for v in [
            "http://x/a",
            "HTTP://x/a",
            " http://x/a",
            "\thttp://x/a",
            "\nhttp://x/a",
            "\u{0}http://x/a",
            "\u{feff}http://x/a",
            "http:x/a",
            "http:/x/a",
            "http:\\\\x/a",
            "ht\ttp://x/a",
            "http://x/a ",
        ] {
            assert!(
                sandboxed.holds(&doc(v), true),
                "{v:?} is read as http://x/a"
            );
        }
        assert!(!sandboxed.holds(&doc("https://x/a"), true));
        assert!(!sandboxed.holds(&doc("mailto:http://x"), true));
        // An allow reads as spelt: a reading never makes it hold more often.
        assert!(!sandboxed.holds(&doc(" http://x/a"), false));
        let drop = c(r#"$.sql contains "drop table""#);
        for v in [
            "DROP TABLE t",
            "drop\ntable t",
            "drop \t table t",
            "x;drop  table t",
        ] {
            assert!(drop.holds(&doc(v), true), "{v:?}");
        }
        assert!(!drop.holds(&doc("droptable"), true));
        let prod = c(r#"$.env == "production""#);
        for v in ["production", "Production", " production", "production\n"] {
            assert!(prod.holds(&doc(v), true), "{v:?}");
        }
        assert!(prod.holds(&doc("production"), false));
        assert!(
            !prod.holds(&doc("Production"), false),
            "an allow's == is as spelt"
        );
        let listed = c(r#"$.env in ["p5.48xlarge", "p4d"]"#);
        assert!(listed.holds(&doc(" P5.48xlarge"), true));
        // The letters simple case mappings turn into ASCII ones (red team round 33: `dısable`
        // passed a block on `disable` to a FastAPI enum read with `upper()`).
        let actions = c(r#"$.env in ["disable", "kill", "stop"]"#);
        for v in [
            "d\u{131}sable",
            "D\u{130}SABLE",
            "\u{212a}ill",
            "\u{17f}top",
        ] {
            assert!(actions.holds(&doc(v), true), "{v:?}");
            assert!(
                !actions.holds(&doc(v), false),
                "{v:?}: an allow reads as spelt"
            );
        }
        assert!(!actions.holds(&doc("d\u{131}sabled"), true));
        // `!=` in a rule that allows holds only where it holds in every reading.
        let not_prod = c(r#"$.env != "production""#);
        assert!(not_prod.holds(&doc("staging"), false));
        for v in [
            "Production",
            " production",
            "production\n",
            "PRODUCTION\t",
            "product\u{131}on",
        ] {
            assert!(!not_prod.holds(&doc(v), false), "{v:?} may be production");
        }
        // In a rule that restricts, as spelt (a reading would make it hold less often).
        assert!(not_prod.holds(&doc("Production"), true));
        assert!(!not_prod.holds(&doc("production"), true));
        // A reading that would change the rule's own literal is not used (the review of round
        // 32: `contains "\r\n"` read trimmed was `contains ""`, and held for every string).
        for (rule, v) in [
            (r#"$.sql contains "\r\n""#, "hello"),
            (r#"$.sql matches "*\n*""#, "one line"),
            (r#"$.sql contains " rm ""#, "terraform plan"),
            (r#"$.sql == " x""#, "x"),
        ] {
            assert!(!c(rule).holds(&doc(v), true), "{rule} on {v:?}");
        }
        assert!(c(r#"$.sql contains "\r\n""#).holds(&doc("a\r\nb"), true));
        assert!(!c(r#"$.sql contains " rm ""#).holds(&doc("x; RM -rf"), false));
        // An ordering of strings, both ways.
        let until = c(r#"$.until <= "2025-12-31""#);
        assert!(until.holds(&doc_until("2025-06-01"), false));
        assert!(
            !until.holds(&doc_until(" 2099-01-01"), false),
            "a server that trims reads 2099"
        );
        assert!(c(r#"$.until > "2025-12-31""#).holds(&doc_until(" 2099-01-01"), true));
    }

    /// Red team round 35: JavaScript's `if (req.body.force)` and Python's truthiness read
    /// `[true]`, `[]`, `{}`, `[false]`, `2`, `-1`, `0.5` and `"please"` as true, so against a
    /// boolean only a boolean is one reading; an absent key is simply absent.
    #[test]
    fn anything_but_a_boolean_against_a_boolean_is_ambiguous() {
        let force = c("$.force == true");
        for v in [
            json!([true]),
            json!([]),
            json!({}),
            json!([false]),
            json!(2),
            json!(-1),
            json!(0.5),
            json!("please"),
            json!(null),
            json!("yes"),
            json!(1),
        ] {
            let doc = json!({ "force": v });
            assert!(force.ambiguity(&doc).is_some(), "{v}");
        }
        // Controls: booleans and an absent key are decided on, as spelt.
        for doc in [json!({"force": true}), json!({"force": false}), json!({})] {
            assert_eq!(force.ambiguity(&doc), None, "{doc}");
        }
        assert!(force.holds(&json!({"force": true}), true));
        assert!(!force.holds(&json!({"force": false}), true));
        // An allow on `== true` allows only `true`, and refuses the rest before it is asked.
        let dry = c("$.dry_run == true");
        assert!(dry.eval(&json!({"dry_run": true})));
        assert!(!dry.eval(&json!({"dry_run": "please"})));
        assert!(dry.ambiguity(&json!({"dry_run": "please"})).is_some());
        assert!(
            c("$.force in [false]")
                .ambiguity(&json!({"force": [false]}))
                .is_some()
        );
    }

    /// Red team round 35: Express's `${req.body.q}` joins an array with `,`, Python's `in` on a
    /// dict tests its keys: a restricting `contains` of a string reads both so; an allow reads
    /// an array's elements only, as spelt.
    #[test]
    fn a_restricting_contains_reads_arrays_as_text_and_objects_as_keys() {
        let drop = c(r#"$.q contains "drop""#);
        for q in [
            json!("drop table t"),
            json!(["drop table t"]),
            json!(["x", "drop table t"]),
            json!(["x", "DROP table t"]),
            json!([["dr", "x"], "drop"]),
            json!({"drop": 1}),
            json!({"x": 1, "DROP TABLE": 2}),
        ] {
            assert!(drop.holds(&json!({ "q": q }), true), "{q}");
        }
        let admin = c(r#"$.roles contains "admin""#);
        assert!(admin.holds(&json!({"roles": {"admin": 1}}), true));
        assert!(admin.holds(&json!({"roles": ["admin"]}), true));
        // Joined: `["dr", "op"]` is `dr,op` to JavaScript, so a needle with a comma spans them.
        assert!(c(r#"$.q contains "x,drop""#).holds(&json!({"q": ["x", "drop"]}), true));
        // Controls: what contains no "drop" anywhere, in keys or text.
        for q in [
            json!(["x", "dro", "p"]),
            json!({"x": "drop"}),
            json!("select 1"),
            json!(["select 1"]),
        ] {
            assert!(!drop.holds(&json!({ "q": q }), true), "{q}");
        }
        // An allow keeps the exact reading: membership of an element, no keys.
        let listed = c(r#"$.tags contains "x""#);
        assert!(listed.holds(&json!({"tags": ["x"]}), false));
        assert!(!listed.holds(&json!({"tags": ["xy"]}), false));
        assert!(!listed.holds(&json!({"tags": {"x": 1}}), false));
    }

    /// Red team round 35: `upper()` applies the full case mappings (`"ﬁle_delete".upper()` is
    /// `FILE_DELETE`, `"straße".upper()` is `STRASSE`), so a restricting rule reads them.
    #[test]
    fn restricting_rules_read_the_full_case_mappings() {
        let delete = c(r#"$.action == "file_delete""#);
        for v in ["\u{fb01}le_delete", "FILE_DELETE", "file_delete"] {
            assert!(delete.holds(&json!({ "action": v }), true), "{v:?}");
        }
        assert!(!delete.holds(&json!({"action": "\u{fb01}le_delete"}), false));
        assert!(!delete.holds(&json!({"action": "file_read"}), true));
        let street = c(r#"$.a in ["strasse", "o\ufb00ice", "\ufb02ag"]"#);
        for v in [
            "stra\u{df}e",
            "STRA\u{1e9e}E",
            "o\u{fb00}ice",
            "\u{fb02}ag",
            "OFFICE",
        ] {
            assert!(street.holds(&json!({ "a": v }), true), "{v:?}");
        }
        // The literal is folded alike: a rule spelling `ß` holds for `SS`.
        assert!(c(r#"$.a == "straße""#).holds(&json!({"a": "STRASSE"}), true));
        assert!(
            c(r#"$.a contains "\ufb03""#).holds(&json!({"a": "xFFIx"}), true),
            "ﬃ"
        );
        // An allow's `!=` holds only where no reading is the literal.
        let not_delete = c(r#"$.action != "file_delete""#);
        assert!(!not_delete.holds(&json!({"action": "\u{fb01}le_delete"}), false));
        assert!(not_delete.holds(&json!({"action": "file_read"}), false));
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
            // As an allow reads them, never both sides: a value whose readings fall on
            // different sides (`" b"` against `"a"`: before it as spelt, after it trimmed)
            // satisfies neither.
            prop_assert!(!(gt.eval(&doc) && le.eval(&doc)));
            prop_assert!(!(lt.eval(&doc) && ge.eval(&doc)));
            // As a restricting rule reads them, a comparable value is on at least one side
            // (both, when its readings differ), and wherever an allow holds, so does it.
            for c in [&gt, &le, &lt, &ge] {
                prop_assert!(!c.eval(&doc) || c.holds(&doc, true));
            }
            if let Some(v) = gt.lookup(&doc)
                && order(v, &gt.value).is_some()
            {
                prop_assert!(gt.holds(&doc, true) || le.holds(&doc, true));
                prop_assert!(lt.holds(&doc, true) || ge.holds(&doc, true));
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
