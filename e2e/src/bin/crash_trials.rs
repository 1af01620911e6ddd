//! `pool-csi-crash-trials N [SEED]`: N crash trials (see `pool_csi_e2e::crash`)
//! across raw, qcow2 and ploop volumes and a gpt disk pool, every call from
//! create to delete interrupted by SIGKILL; prints each failure as it
//! happens and `N passed, M failed` at the end (exit 1 on any failure).
//! Run it through `dev/crash-trials`.

use pool_csi_e2e::crash::{run, Trial};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    if let Some(why) = pool_csi_e2e::missing_requirements(true) {
        eprintln!("crash trials {why}");
        return std::process::ExitCode::FAILURE;
    }
    let mut args = std::env::args().skip(1);
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200);
    let seed: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64);
    println!("{n} trials, seed {seed}");
    let (mut passed, mut failed) = (0, 0);
    for i in 0..n {
        let t = Trial::nth(seed, i);
        match run(&t).await {
            Ok(()) => passed += 1,
            Err(e) => {
                failed += 1;
                println!("FAILED trial {i} (seed {seed}): {t:?}: {e}");
            }
        }
        if (i + 1) % 25 == 0 {
            println!("{} done: {passed} passed, {failed} failed", i + 1);
        }
    }
    println!("{passed} passed, {failed} failed");
    match failed {
        0 => std::process::ExitCode::SUCCESS,
        _ => std::process::ExitCode::FAILURE,
    }
}
