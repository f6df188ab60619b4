//! `labelSelector` and `fieldSelector` query parameters: parsing and matching.
//!
//! The label grammar is the one of apimachinery's `labels.Parse`: comma-separated requirements
//! `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k>1`, `k<1`. The field grammar
//! is `fields.ParseSelector`: `path=v`, `path==v`, `path!=v`, with `\,` `\=` `\\` escapes.
//! Field paths are resolved generically against the object's JSON (`spec.nodeName`,
//! `status.phase`, ...), a missing field reading as the empty string.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(String);

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelOp {
    Exists,
    DoesNotExist,
    Equals(String),
    NotEquals(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: LabelOp,
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let tokens = lex(s)?;
        let mut p = Parser { tokens, pos: 0 };
        let mut reqs = Vec::new();
        if p.peek().is_none() {
            return Ok(Self(reqs));
        }
        loop {
            reqs.push(p.requirement()?);
            match p.next() {
                None => break,
                Some(Tok::Comma) => continue,
                Some(t) => return Err(SelectorError(format!("found '{t}', expected: ','"))),
            }
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| {
            let v = labels.get(&r.key);
            match &r.op {
                LabelOp::Exists => v.is_some(),
                LabelOp::DoesNotExist => v.is_none(),
                LabelOp::Equals(want) => v == Some(want),
                LabelOp::NotEquals(want) => v != Some(want),
                LabelOp::In(set) => v.is_some_and(|v| set.contains(v)),
                LabelOp::NotIn(set) => v.is_none_or(|v| !set.contains(v)),
                LabelOp::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                LabelOp::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        if self.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Comma,
    Open,
    Close,
    Eq,
    DoubleEq,
    NotEq,
    Not,
    Gt,
    Lt,
    In,
    NotIn,
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tok::Ident(s) => s,
            Tok::Comma => ",",
            Tok::Open => "(",
            Tok::Close => ")",
            Tok::Eq => "=",
            Tok::DoubleEq => "==",
            Tok::NotEq => "!=",
            Tok::Not => "!",
            Tok::Gt => ">",
            Tok::Lt => "<",
            Tok::In => "in",
            Tok::NotIn => "notin",
        })
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '=' | '!' | '(' | ')' | ',' | '>' | '<')
}

fn lex(s: &str) -> Result<Vec<Tok>, SelectorError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if is_special(c) {
            chars.next();
            let two = chars.peek().copied();
            out.push(match (c, two) {
                ('=', Some('=')) => {
                    chars.next();
                    Tok::DoubleEq
                }
                ('!', Some('=')) => {
                    chars.next();
                    Tok::NotEq
                }
                ('=', _) => Tok::Eq,
                ('!', _) => Tok::Not,
                ('(', _) => Tok::Open,
                (')', _) => Tok::Close,
                (',', _) => Tok::Comma,
                ('>', _) => Tok::Gt,
                ('<', _) => Tok::Lt,
                _ => unreachable!("is_special covers these"),
            });
            continue;
        }
        let mut ident = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() || is_special(c) {
                break;
            }
            ident.push(c);
            chars.next();
        }
        out.push(match ident.as_str() {
            "in" => Tok::In,
            "notin" => Tok::NotIn,
            _ => Tok::Ident(ident),
        });
    }
    Ok(out)
}

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn ident(&mut self, what: &str) -> Result<String, SelectorError> {
        match self.next() {
            Some(Tok::Ident(s)) => Ok(s),
            Some(t) => Err(SelectorError(format!("found '{t}', expected: {what}"))),
            None => Err(SelectorError(format!("found '', expected: {what}"))),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        if self.peek() == Some(&Tok::Not) {
            self.next();
            let key = self.ident("identifier after '!'")?;
            validate_key(&key)?;
            return Ok(Requirement {
                key,
                op: LabelOp::DoesNotExist,
            });
        }
        let key = self.ident("identifier")?;
        validate_key(&key)?;
        let op = match self.peek() {
            None | Some(Tok::Comma) => LabelOp::Exists,
            Some(Tok::Eq) | Some(Tok::DoubleEq) => {
                self.next();
                LabelOp::Equals(self.value()?)
            }
            Some(Tok::NotEq) => {
                self.next();
                LabelOp::NotEquals(self.value()?)
            }
            Some(Tok::In) => {
                self.next();
                LabelOp::In(self.set()?)
            }
            Some(Tok::NotIn) => {
                self.next();
                LabelOp::NotIn(self.set()?)
            }
            Some(Tok::Gt) | Some(Tok::Lt) => {
                let gt = self.next() == Some(Tok::Gt);
                let v = self.ident("an integer")?;
                let n = v.parse().map_err(|_| {
                    SelectorError(format!(
                        "for 'Gt', 'Lt' operators, the value must be an integer, found {v:?}"
                    ))
                })?;
                if gt {
                    LabelOp::Gt(n)
                } else {
                    LabelOp::Lt(n)
                }
            }
            Some(t) => {
                return Err(SelectorError(format!(
                    "found '{t}', expected: in, notin, =, ==, !=, gt, lt"
                )))
            }
        };
        Ok(Requirement { key, op })
    }

    /// A single value; it may be empty (`a=` selects the empty value).
    fn value(&mut self) -> Result<String, SelectorError> {
        match self.peek() {
            Some(Tok::Ident(_)) => {
                let v = self.ident("value")?;
                validate_value(&v)?;
                Ok(v)
            }
            None | Some(Tok::Comma) => Ok(String::new()),
            Some(t) => Err(SelectorError(format!("found '{t}', expected: identifier"))),
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        match self.next() {
            Some(Tok::Open) => {}
            Some(t) => return Err(SelectorError(format!("found '{t}', expected: '('"))),
            None => return Err(SelectorError("found '', expected: '('".into())),
        }
        if self.peek() == Some(&Tok::Close) {
            return Err(SelectorError(
                "for 'in', 'notin' operators, values set can't be empty".into(),
            ));
        }
        let mut values = Vec::new();
        loop {
            let v = match self.peek() {
                Some(Tok::Ident(_)) => self.ident("value")?,
                Some(Tok::Comma) | Some(Tok::Close) => String::new(),
                Some(t) => return Err(SelectorError(format!("found '{t}', expected: identifier"))),
                None => return Err(SelectorError("found '', expected: ')'".into())),
            };
            validate_value(&v)?;
            values.push(v);
            match self.next() {
                Some(Tok::Comma) => continue,
                Some(Tok::Close) => break,
                Some(t) => return Err(SelectorError(format!("found '{t}', expected: ',' or ')'"))),
                None => return Err(SelectorError("found '', expected: ')'".into())),
            }
        }
        Ok(values)
    }
}

fn validate_key(k: &str) -> Result<(), SelectorError> {
    match fibril_core::manifest::qualified_name(k) {
        Some(msg) => Err(SelectorError(msg)),
        None => Ok(()),
    }
}

fn validate_value(v: &str) -> Result<(), SelectorError> {
    match fibril_core::manifest::label_value(v) {
        Some(msg) => Err(SelectorError(msg)),
        None => Ok(()),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FieldRequirement {
    path: String,
    value: String,
    equal: bool,
}

/// A parsed field selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldRequirement>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_unescaped(s, ',') {
            if part.trim().is_empty() {
                continue;
            }
            let (path, op_len, equal) = find_field_op(&part).ok_or_else(|| {
                SelectorError(format!(
                    "invalid selector: '{part}'; can't understand '{part}'"
                ))
            })?;
            let key = part[..path].trim().to_string();
            if key.is_empty() {
                return Err(SelectorError(format!(
                    "invalid selector: '{part}': empty field"
                )));
            }
            let value = unescape(&part[path + op_len..]);
            reqs.push(FieldRequirement {
                path: key,
                value,
                equal,
            });
        }
        Ok(Self(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn matches_object(&self, obj: &Value) -> bool {
        self.0.iter().all(|r| {
            let have = field_value(obj, &r.path);
            (have == r.value) == r.equal
        })
    }
}

/// The position and length of the first unescaped operator, and whether it is an equality.
fn find_field_op(s: &str) -> Option<(usize, usize, bool)> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'!' if b.get(i + 1) == Some(&b'=') => return Some((i, 2, false)),
            b'=' if b.get(i + 1) == Some(&b'=') => return Some((i, 2, true)),
            b'=' => return Some((i, 1, true)),
            _ => i += 1,
        }
    }
    None
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.last_mut().expect("non-empty").push(c);
            escaped = false;
        } else if c == '\\' {
            out.last_mut().expect("non-empty").push(c);
            escaped = true;
        } else if c == sep {
            out.push(String::new());
        } else {
            out.last_mut().expect("non-empty").push(c);
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Resolves a dotted field path to its string form, as field selectors compare it.
fn field_value(obj: &Value, path: &str) -> String {
    let mut cur = obj;
    for seg in path.split('.') {
        match cur.get(seg) {
            Some(v) => cur = v,
            None => return String::new(),
        }
    }
    match cur {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn m(sel: &str, l: &[(&str, &str)]) -> bool {
        LabelSelector::parse(sel).unwrap().matches(&labels(l))
    }

    #[test]
    fn equality() {
        assert!(m("a=b", &[("a", "b")]));
        assert!(m("a==b", &[("a", "b")]));
        assert!(!m("a=b", &[("a", "c")]));
        assert!(!m("a=b", &[]));
        assert!(m("a!=b", &[("a", "c")]));
        assert!(m("a!=b", &[]));
        assert!(!m("a!=b", &[("a", "b")]));
        assert!(m("a=", &[("a", "")]));
        assert!(m(
            "app.kubernetes.io/name = web , tier=fe",
            &[("app.kubernetes.io/name", "web"), ("tier", "fe")]
        ));
    }

    #[test]
    fn set_based() {
        assert!(m("a in (x,y)", &[("a", "y")]));
        assert!(!m("a in (x, y)", &[("a", "z")]));
        assert!(!m("a in (x)", &[]));
        assert!(m("a notin (x)", &[("a", "y")]));
        assert!(m("a notin (x)", &[]));
        assert!(!m("a notin (x,y)", &[("a", "x")]));
        assert!(m("a", &[("a", "")]));
        assert!(!m("a", &[]));
        assert!(m("!a", &[("b", "1")]));
        assert!(!m("!a", &[("a", "1")]));
        assert!(m("a in (x),!b,c!=d", &[("a", "x"), ("c", "e")]));
        assert!(m("n>3,n<10", &[("n", "5")]));
        assert!(!m("n>3", &[("n", "x")]));
        assert!(m("", &[]));
    }

    #[test]
    fn parse_errors() {
        for bad in [
            "a in ()",
            "a in x",
            "a in (x",
            "=b",
            "a=b=c",
            "a b",
            "a in (x)y",
            "!",
            "Bad Key=1",
            "a=b c",
            "-a=b",
            "a=-b-",
            "n>x",
        ] {
            assert!(LabelSelector::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p", "namespace": "ns"},
                         "spec": {"nodeName": "node-1"}, "status": {"phase": "Running"}});
        let f = |s: &str| FieldSelector::parse(s).unwrap().matches_object(&pod);
        assert!(f("metadata.name=p"));
        assert!(f("metadata.name==p,metadata.namespace=ns"));
        assert!(!f("metadata.name!=p"));
        assert!(f("spec.nodeName=node-1"));
        assert!(f("status.phase!=Succeeded"));
        assert!(f("spec.schedulerName="));
        assert!(!f("spec.nodeName="));
        assert!(f(""));
        assert!(FieldSelector::parse("metadata.name").is_err());
        let odd = json!({"metadata": {"name": "a,b=c"}});
        assert!(FieldSelector::parse(r"metadata.name=a\,b\=c")
            .unwrap()
            .matches_object(&odd));
    }

    #[test]
    fn matches_object_labels() {
        let obj = json!({"metadata": {"labels": {"app": "web"}}});
        assert!(LabelSelector::parse("app=web")
            .unwrap()
            .matches_object(&obj));
        assert!(!LabelSelector::parse("app=db").unwrap().matches_object(&obj));
        assert!(LabelSelector::parse("!app")
            .unwrap()
            .matches_object(&json!({})));
    }
}
