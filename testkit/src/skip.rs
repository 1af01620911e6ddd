//! Skips that CI can see. A test that cannot run here calls [`skip`] with a
//! short key for what is missing and the reason; the skip is printed,
//! appended to `$POOL_CSI_SKIP_LOG` (`dev/test` prints them all at the end:
//! nextest hides a passing test's output) and, when
//! `POOL_CSI_REQUIRE_ALL=1` (`.ci/run`), fails the test unless its key is
//! in `dev/allowed-skips`: on CI a missing tool is a broken set-up, not a
//! pass.

use std::io::Write;

/// `dev/allowed-skips`: `key  reason` per line, `#` comments.
const ALLOWED: &str = include_str!("../../dev/allowed-skips");

/// Whether `key` may skip under `POOL_CSI_REQUIRE_ALL=1`.
pub fn allowed(key: &str) -> bool {
    ALLOWED
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter_map(|l| l.split_whitespace().next())
        .any(|k| k == key)
}

fn require_all() -> bool {
    std::env::var("POOL_CSI_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Records that (part of) the calling test cannot run here: `key` names
/// what is missing (`root`, `device-mapper`, `kubeconfig` …), `why` says
/// what to install or why it cannot be. The caller then returns, or goes
/// on with what it can still check. Panics under `POOL_CSI_REQUIRE_ALL=1`
/// when `key` is not allowed to skip.
pub fn skip(key: &str, why: &str) {
    let log = std::env::var_os("POOL_CSI_SKIP_LOG").map(std::path::PathBuf::from);
    record(key, why, log.as_deref(), require_all());
}

/// [`skip`] with its environment given.
fn record(key: &str, why: &str, log: Option<&std::path::Path>, require_all: bool) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    eprintln!("SKIPPED [{key}] {test}: {why}");
    if let Some(log) = log {
        // One short append per skip: lines from parallel tests stay whole.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = f.write_all(format!("{key}\t{test}\t{why}\n").as_bytes());
        }
    }
    if require_all && !allowed(key) {
        panic!(
            "{test} cannot run here ({why}), and POOL_CSI_REQUIRE_ALL=1: install what is missing (dev/setup), or, if CI can never have it, add `{key}` to dev/allowed-skips with the reason"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allow_list_is_read_by_key_and_ignores_comments() {
        assert!(allowed("kubeconfig"));
        assert!(allowed("device-mapper"));
        assert!(!allowed("root"));
        assert!(!allowed("#"));
        assert!(!allowed(""));
    }

    #[test]
    fn a_skip_is_logged_and_fails_under_require_all_unless_allowed() {
        let t = tempfile::tempdir().unwrap();
        let log = t.path().join("skips.tsv");
        record("device-mapper", "no dm here", Some(&log), true);
        record("qemu", "no qemu here", Some(&log), false);
        let failed = std::panic::catch_unwind(|| record("root", "not root", Some(&log), true));
        let why = failed.unwrap_err();
        let why = why.downcast_ref::<String>().unwrap();
        assert!(
            why.contains("POOL_CSI_REQUIRE_ALL=1") && why.contains("`root`"),
            "{why}"
        );
        let lines: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').next().unwrap().to_string())
            .collect();
        assert_eq!(
            lines,
            ["device-mapper", "qemu", "root"],
            "every skip is logged first"
        );
    }
}
