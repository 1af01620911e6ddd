//! Label selectors as the API server parses them (`labels.Parse` in
//! apimachinery): `k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`, joined by commas. A selector the server cannot parse
//! is refused with 400, never matched loosely.

use serde_json::Value;

#[derive(Debug, PartialEq, Eq)]
enum Term {
    Exists(String),
    Absent(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed selector: every term must hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Selector(Vec<Term>);

impl Selector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for raw in split_top(s)? {
            let t = raw.trim();
            if t.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(format!("unable to parse requirement: empty term in {s:?}"));
            }
            terms.push(term(t)?);
        }
        Ok(Self(terms))
    }

    /// Whether `obj`'s labels satisfy every term.
    pub fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|t| match t {
            Term::Exists(k) => get(k).is_some(),
            Term::Absent(k) => get(k).is_none(),
            Term::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            // As in apimachinery: a missing label satisfies `!=` and `notin`.
            Term::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
        })
    }
}

/// Splits at commas outside parentheses.
fn split_top(s: &str) -> Result<Vec<&str>, String> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("unbalanced parentheses in selector {s:?}"));
        }
    }
    if depth != 0 {
        return Err(format!("unbalanced parentheses in selector {s:?}"));
    }
    out.push(&s[start..]);
    Ok(out)
}

fn term(t: &str) -> Result<Term, String> {
    if let Some(k) = t.strip_prefix('!') {
        return Ok(Term::Absent(key(k.trim())?));
    }
    for (op, negate) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = t.split_once(op) {
            let (k, v) = (key(k.trim())?, value(v.trim())?);
            return Ok(if negate {
                Term::NotIn(k, vec![v])
            } else {
                Term::In(k, vec![v])
            });
        }
    }
    let words: Vec<&str> = t.splitn(2, char::is_whitespace).collect();
    if let [k, rest] = words[..] {
        let rest = rest.trim_start();
        for (op, negate) in [("notin", true), ("in", false)] {
            if let Some(set) = rest.strip_prefix(op) {
                let set = set.trim();
                let inner = set
                    .strip_prefix('(')
                    .and_then(|s| s.strip_suffix(')'))
                    .ok_or_else(|| format!("expected a parenthesised set in {t:?}"))?;
                let vs = inner
                    .split(',')
                    .map(|v| value(v.trim()))
                    .collect::<Result<Vec<_>, _>>()?;
                if vs.iter().all(String::is_empty) {
                    return Err(format!("{op} needs at least one value in {t:?}"));
                }
                let k = key(k)?;
                return Ok(if negate {
                    Term::NotIn(k, vs)
                } else {
                    Term::In(k, vs)
                });
            }
        }
        return Err(format!("unable to parse requirement {t:?}"));
    }
    Ok(Term::Exists(key(t)?))
}

fn key(k: &str) -> Result<String, String> {
    crate::validate::qualified_name(k)
        .map(|()| k.to_string())
        .map_err(|why| format!("invalid label key {k:?}: {why}"))
}

fn value(v: &str) -> Result<String, String> {
    let ok = v.is_empty()
        || (v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && v.starts_with(|c: char| c.is_ascii_alphanumeric())
            && v.ends_with(|c: char| c.is_ascii_alphanumeric()));
    ok.then(|| v.to_string())
        .ok_or_else(|| format!("invalid label value {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn o(labels: Value) -> Value {
        json!({"metadata": {"labels": labels}})
    }

    #[test]
    fn every_operator_the_server_knows() {
        let x = o(json!({"app": "x", "tier": "node"}));
        let sel = |s| Selector::parse(s).unwrap().matches(&x);
        assert!(sel("app=x,tier=node") && sel("app==x") && !sel("app=y"));
        assert!(sel("app") && !sel("other") && sel("!other") && !sel("!app"));
        assert!(sel("app!=y") && !sel("app!=x") && sel("missing!=y"));
        assert!(sel("tier in (node, controller)") && !sel("tier in (controller)"));
        assert!(sel("tier notin (controller)") && !sel("tier notin (node,a)"));
        assert!(sel("missing notin (a)") && !sel("missing in (a)"));
        assert!(sel("app=x,tier in (a,node),!gone"));
        assert!(sel(""), "the empty selector matches everything");
    }

    #[test]
    fn what_the_server_cannot_parse_is_refused() {
        for bad in [
            "app in x",
            "tier in (a",
            "a,,b",
            "Bad Key=x",
            "app=not a value",
            "app in ()",
            "app=((x))",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
