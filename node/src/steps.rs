//! How long each part of staging and unstaging takes, for operators and the
//! benchmark: `pool_csi_stage_step_seconds{step}` on `/metrics` (a summary:
//! `_sum` and `_count`), and a debug event per step with its time.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Per step: calls and seconds, since the node started.
static STEPS: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

/// Runs `f` as step `step` and records how long it took (failed or not).
pub async fn timed<T>(step: &'static str, f: impl Future<Output = T>) -> T {
    let t = Instant::now();
    let r = f.await;
    record(step, t.elapsed());
    r
}

/// [`timed`] for a step that is one system call (mount, unmount).
pub fn timed_sync<T>(step: &'static str, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    record(step, t.elapsed());
    r
}

pub fn record(step: &'static str, took: Duration) {
    tracing::debug!(step, took_us = took.as_micros() as u64, "stage step");
    let mut s = STEPS.lock().unwrap_or_else(|p| p.into_inner());
    let e = s.entry(step).or_default();
    e.0 += 1;
    e.1 += took.as_secs_f64();
}

/// The exposition text.
pub fn render() -> String {
    use std::fmt::Write as _;
    let mut out = String::from("# HELP pool_csi_stage_step_seconds Time spent in each part of staging and unstaging volumes.\n# TYPE pool_csi_stage_step_seconds summary\n");
    for (step, (n, secs)) in STEPS.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(
            out,
            "pool_csi_stage_step_seconds_sum{{step=\"{step}\"}} {secs}\npool_csi_stage_step_seconds_count{{step=\"{step}\"}} {n}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_add_up_in_the_exposition() {
        timed("test_step", tokio::time::sleep(Duration::from_millis(20))).await;
        record("test_step", Duration::from_millis(10));
        let text = render();
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}{{step=\"test_step\"}} ")))
                .unwrap_or_else(|| panic!("{name} in {text}"))
                .parse()
                .unwrap()
        };
        assert_eq!(value("pool_csi_stage_step_seconds_count"), 2.0);
        let sum = value("pool_csi_stage_step_seconds_sum");
        assert!((0.03..1.0).contains(&sum), "{sum}");
    }
}
