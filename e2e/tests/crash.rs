//! Crash trials in CI: every call from create to delete on raw, qcow2 and
//! ploop files, gpt partitions and directory volumes on a GlusterFS share,
//! each interrupted once by SIGKILL of the
//! node plugin (a quarter of them the controller too) at a random moment,
//! retried to convergence, its data read back and leftovers counted (see
//! `pool_csi_e2e::crash`). `dev/crash-trials` runs hundreds. The seed is
//! printed; `POOL_CSI_CRASH_SEED` repeats a run's scenarios (the kill
//! moments are as precise as the scheduler).

use pool_csi_e2e::{
    crash::{run, Backing, Trial, BACKINGS, OPS},
    require,
};

async fn trials(backing: Backing) {
    let seed = std::env::var("POOL_CSI_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    let b = BACKINGS.iter().position(|x| *x == backing).unwrap() as u64;
    let mut failures = Vec::new();
    for op in 0..OPS.len() as u64 {
        // Trial::nth walks backings fastest, then calls.
        let t = Trial::nth(seed, op * BACKINGS.len() as u64 + b);
        assert_eq!(t.backing, backing);
        if let Err(e) = run(&t).await {
            failures.push(format!("{t:?}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "seed {seed}: {} of {} trials failed:\n{}",
        failures.len(),
        OPS.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_volumes_converge_after_crashes_in_every_call() {
    require!(false);
    trials(Backing::Raw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_volumes_converge_after_crashes_in_every_call() {
    require!(true);
    trials(Backing::Qcow2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ploop_volumes_converge_after_crashes_in_every_call() {
    require!(true);
    trials(Backing::Ploop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpt_partitions_converge_after_crashes_in_every_call() {
    require!(false);
    trials(Backing::Disk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_volumes_on_a_share_converge_after_crashes_in_every_call() {
    require!(false);
    if let Some(why) = pool_csi_e2e::gluster::missing() {
        pool_csi_e2e::skip("glusterfs", &why);
        return;
    }
    trials(Backing::Directory).await;
}
