//! What the API server does with a custom resource written against its
//! CRD's structural schema (apiextensions-apiserver): null values of fields
//! that are not `nullable` are dropped, defaults filled in, unknown fields
//! pruned (or, with `fieldValidation=Strict`, refused), and then types,
//! enums, `required` and numeric bounds validated (422 on any failure).

use serde_json::{Map, Value};

/// The outcome of writing `obj`: the object as stored, or why not.
pub fn admit(schema: &Value, obj: &mut Value, strict: bool) -> Result<(), String> {
    let mut unknown = Vec::new();
    let mut errors = Vec::new();
    let Some(root) = obj.as_object_mut() else {
        return Err("the body is not an object".into());
    };
    // apiVersion, kind and metadata are the server's own, never pruned here.
    let meta: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
        .iter()
        .filter_map(|k| root.remove(*k).map(|v| (k.to_string(), v)))
        .collect();
    let mut rest = Value::Object(std::mem::take(root));
    walk(schema, &mut rest, "", &mut unknown, &mut errors);
    let mut rest = match rest {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    rest.extend(meta);
    *obj = Value::Object(rest);
    if strict && !unknown.is_empty() {
        let list: Vec<String> = unknown
            .iter()
            .map(|u| format!("unknown field {u:?}"))
            .collect();
        return Err(list.join(", "));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn walk(s: &Value, v: &mut Value, path: &str, unknown: &mut Vec<String>, errors: &mut Vec<String>) {
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    if let Some(want) = s["type"].as_str() {
        let ok = match (want, &*v) {
            ("object", Value::Object(_)) | ("array", Value::Array(_)) => true,
            ("string", Value::String(_)) | ("boolean", Value::Bool(_)) => true,
            ("integer", Value::Number(n)) => n.is_i64() || n.is_u64(),
            ("number", Value::Number(_)) => true,
            _ => false,
        };
        let int_or_string = s["x-kubernetes-int-or-string"] == Value::Bool(true)
            && matches!(v, Value::String(_) | Value::Number(_));
        if !ok && !int_or_string {
            errors.push(format!(
                "{path}: Invalid value: {}: must be of type {want}",
                kind(v)
            ));
            return;
        }
    }
    if let Some(allowed) = s["enum"].as_array() {
        if !allowed.contains(v) {
            errors.push(format!("{path}: Unsupported value: {v}"));
        }
    }
    if let (Some(min), Some(n)) = (s["minimum"].as_f64(), v.as_f64()) {
        if n < min {
            errors.push(format!(
                "{path}: Invalid value: {n}: should be greater than or equal to {min}"
            ));
        }
    }
    if let (Some(max), Some(n)) = (s["maximum"].as_f64(), v.as_f64()) {
        if n > max {
            errors.push(format!(
                "{path}: Invalid value: {n}: should be less than or equal to {max}"
            ));
        }
    }
    match v {
        Value::Object(m) => {
            let props = s["properties"].as_object();
            let extra = s.get("additionalProperties").filter(|a| a.is_object());
            let keep_unknown = s["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let sub = props.and_then(|p| p.get(&k)).or(extra);
                match sub {
                    Some(sub) => {
                        if m[&k].is_null() && sub["nullable"] != Value::Bool(true) {
                            m.remove(&k);
                            continue;
                        }
                        if !m[&k].is_null() {
                            walk(
                                sub,
                                m.get_mut(&k).expect("present"),
                                &at(&k),
                                unknown,
                                errors,
                            );
                        }
                    }
                    None if keep_unknown => {}
                    None => {
                        m.remove(&k);
                        unknown.push(at(&k));
                    }
                }
            }
            for (k, sub) in props.into_iter().flatten() {
                if !m.contains_key(k) {
                    if let Some(d) = sub.get("default") {
                        m.insert(k.clone(), d.clone());
                    }
                }
            }
            for r in s["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str().filter(|r| !m.contains_key(*r)) {
                    errors.push(format!("{}: Required value", at(r)));
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter_mut().enumerate() {
                    walk(item, x, &format!("{path}[{i}]"), unknown, errors);
                }
            }
        }
        _ => {}
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["type"], "properties": {
                "type": {"type": "string", "enum": ["dir", "fs"]},
                "autoBuild": {"type": "boolean", "default": false},
                "size": {"type": "integer", "minimum": 0, "nullable": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "opts": {"type": "array", "items": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            }},
            "status": {"type": "object", "properties": {"state": {"type": "string"}}},
        }})
    }

    #[test]
    fn unknown_fields_are_pruned_or_refused_when_strict() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "odd": 1},
            "spec": {"type": "dir", "bogus": 1, "labels": {"k": "v"}, "free": {"any": [1]}},
            "extra": true});
        admit(&schema(), &mut o, false).unwrap();
        assert_eq!(o["spec"].get("bogus"), None);
        assert_eq!(o.get("extra"), None);
        assert_eq!(o["spec"]["free"], json!({"any": [1]}));
        assert_eq!(o["metadata"]["odd"], 1, "metadata is left alone");
        assert_eq!(o["spec"]["autoBuild"], false, "defaults filled in");
        let mut o = json!({"spec": {"type": "dir", "bogus": 1}});
        let e = admit(&schema(), &mut o, true).unwrap_err();
        assert_eq!(e, "unknown field \"spec.bogus\"");
    }

    #[test]
    fn types_enums_required_and_bounds_are_checked() {
        let bad = |spec: Value| {
            let mut o = json!({"spec": spec});
            admit(&schema(), &mut o, false).unwrap_err()
        };
        assert!(bad(json!({"type": "lvm"})).contains("Unsupported value"));
        assert!(bad(json!({})).contains("spec.type: Required value"));
        assert!(bad(json!({"type": "dir", "size": "1Gi"})).contains("must be of type integer"));
        assert!(bad(json!({"type": "dir", "size": -1})).contains("greater than or equal to 0"));
        assert!(bad(json!({"type": "dir", "opts": ["a", 1]})).contains("spec.opts[1]"));
        assert!(bad(json!({"type": "dir", "labels": {"k": 2}})).contains("spec.labels.k"));
        // null: kept where nullable, dropped where not.
        let mut o = json!({"spec": {"type": "dir", "size": null, "autoBuild": null}});
        admit(&schema(), &mut o, false).unwrap();
        assert_eq!(o["spec"].get("size"), Some(&Value::Null), "nullable: kept");
        assert_eq!(o["spec"]["autoBuild"], false, "dropped, then defaulted");
    }
}
