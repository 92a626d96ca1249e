//! Reading the `--json` answers: each accessor panics with the whole value
//! when a field is missing or of another type, so a changed shape fails
//! with what was there; and the expected lists they are compared with.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use super::run_ok;

pub(crate) fn parse_json(what: &str, bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not JSON ({e}):\n{}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// Runs `cmd`, expecting success, and parses what it printed.
pub(crate) fn json_of(what: &str, cmd: &mut Command) -> Value {
    let out = run_ok(cmd);
    parse_json(what, &out.stdout)
}

pub(crate) fn json_str<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("expected string field {key:?} in {v}"))
}

pub(crate) fn json_u64(v: &Value, key: &str) -> u64 {
    v.get(key)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("expected unsigned number field {key:?} in {v}"))
}

pub(crate) fn json_f64(v: &Value, key: &str) -> f64 {
    v.get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("expected number field {key:?} in {v}"))
}

pub(crate) fn json_bool(v: &Value, key: &str) -> bool {
    v.get(key)
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("expected boolean field {key:?} in {v}"))
}

pub(crate) fn json_array<'a>(v: &'a Value, key: &str) -> &'a Vec<Value> {
    v.get(key)
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("expected array field {key:?} in {v}"))
}

/// An array field of strings.
pub(crate) fn json_str_list(v: &Value, key: &str) -> Vec<String> {
    json_array(v, key)
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("{key:?} holds a non-string: {v}"))
                .to_string()
        })
        .collect()
}

/// Owned strings, to compare with a list read from an answer.
pub(crate) fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// The same as a set, where order does not matter.
pub(crate) fn string_set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}
