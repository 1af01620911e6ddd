//! The patch types the API server accepts, told apart by Content-Type as
//! it does: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic
//! merge patch (built-in kinds only; a custom resource answers 415) and
//! server-side apply (a `fieldManager` is required). Strategic merge is
//! applied as a merge patch here: list merging by key is not modelled, and
//! nothing the driver sends depends on it.

use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Merge,
    Json,
    Strategic,
    Apply,
}

impl Kind {
    /// The patch type of a Content-Type header; None: 415.
    pub fn of(content_type: &str) -> Option<Self> {
        match content_type.split(';').next().unwrap_or("").trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// JSON merge patch (RFC 7386).
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("made an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// JSON patch (RFC 6902): every operation applies or none does.
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops
        .as_array()
        .ok_or("a JSON patch is an array of operations")?;
    let mut work = target.clone();
    for (i, op) in ops.iter().enumerate() {
        let s = |k: &str| {
            op[k]
                .as_str()
                .ok_or(format!("operation {i}: {k} is required"))
        };
        let path = s("path")?;
        match s("op")? {
            "add" => add(&mut work, path, op["value"].clone())?,
            "remove" => drop(remove(&mut work, path)?),
            "replace" => {
                remove(&mut work, path)?;
                add(&mut work, path, op["value"].clone())?;
            }
            "move" => {
                let v = remove(&mut work, s("from")?)?;
                add(&mut work, path, v)?;
            }
            "copy" => {
                let v = get(&work, s("from")?)?.clone();
                add(&mut work, path, v)?;
            }
            "test" => {
                if get(&work, path)? != &op["value"] {
                    return Err(format!("operation {i}: test failed at {path}"));
                }
            }
            other => return Err(format!("operation {i}: unknown op {other:?}")),
        }
    }
    *target = work;
    Ok(())
}

fn tokens(path: &str) -> Result<Vec<String>, String> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let rest = path
        .strip_prefix('/')
        .ok_or(format!("a JSON pointer starts with '/': {path:?}"))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn get<'a>(v: &'a Value, path: &str) -> Result<&'a Value, String> {
    let mut at = v;
    for t in tokens(path)? {
        at = match at {
            Value::Object(m) => m.get(&t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or(format!("path {path:?} does not exist"))?;
    }
    Ok(at)
}

fn parent<'a>(v: &'a mut Value, path: &str) -> Result<(&'a mut Value, String), String> {
    let mut ts = tokens(path)?;
    let last = ts.pop().ok_or("the whole document cannot be the target")?;
    let mut at = v;
    for t in ts {
        at = match at {
            Value::Object(m) => m.get_mut(&t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or(format!("path {path:?} does not exist"))?;
    }
    Ok((at, last))
}

fn add(v: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (p, last) = parent(v, path)?;
    match p {
        Value::Object(m) => {
            m.insert(last, value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => match last.parse::<usize>() {
            Ok(i) if i <= a.len() => {
                a.insert(i, value);
                Ok(())
            }
            _ => Err(format!("index out of range in {path:?}")),
        },
        _ => Err(format!("path {path:?} does not exist")),
    }
}

fn remove(v: &mut Value, path: &str) -> Result<Value, String> {
    let (p, last) = parent(v, path)?;
    match p {
        Value::Object(m) => m.remove(&last),
        Value::Array(a) => last
            .parse::<usize>()
            .ok()
            .filter(|i| *i < a.len())
            .map(|i| a.remove(i)),
        _ => None,
    }
    .ok_or(format!("path {path:?} does not exist"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_removes_nulls_and_replaces_lists() {
        let mut o = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge(&mut o, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(o, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }

    #[test]
    fn json_patch_applies_all_or_nothing() {
        let mut o = json!({"metadata": {"labels": {"a/b": "x"}}, "l": [1, 3]});
        json_patch(
            &mut o,
            &json!([
                {"op": "add", "path": "/l/1", "value": 2},
                {"op": "replace", "path": "/metadata/labels/a~1b", "value": "y"},
                {"op": "test", "path": "/l/2", "value": 3},
                {"op": "copy", "from": "/l/0", "path": "/first"},
                {"op": "move", "from": "/first", "path": "/moved"},
                {"op": "add", "path": "/l/-", "value": 4},
            ]),
        )
        .unwrap();
        assert_eq!(
            o,
            json!({"metadata": {"labels": {"a/b": "y"}}, "l": [1, 2, 3, 4], "moved": 1})
        );
        let before = o.clone();
        let failed = json_patch(
            &mut o,
            &json!([
                {"op": "remove", "path": "/l/0"},
                {"op": "test", "path": "/moved", "value": 2},
            ]),
        );
        assert!(failed.unwrap_err().contains("test failed"));
        assert_eq!(o, before, "a failed patch changes nothing");
        assert!(json_patch(&mut o, &json!([{"op": "remove", "path": "/nope"}])).is_err());
        assert!(json_patch(&mut o, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(Kind::of("application/merge-patch+json"), Some(Kind::Merge));
        assert_eq!(
            Kind::of("application/apply-patch+yaml; charset=utf-8"),
            Some(Kind::Apply)
        );
        assert_eq!(Kind::of("application/json"), None);
    }
}
