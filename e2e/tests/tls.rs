//! Mutual TLS on the agent API: the controller (with a certificate from the
//! cluster CA) gets through; a caller without a certificate, or with one from
//! another CA, does not.

use pool_csi_e2e::{req, require, Driver, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_callers_with_a_certificate_from_the_ca_reach_the_agent() {
    require!(false);
    pool_csi_e2e::require_tool!(
        "openssl",
        "needs openssl to make test certificates (run dev/setup)"
    );
    let d = Driver::start(Options {
        tls: true,
        ..Default::default()
    })
    .await;
    let mut c = d.clients().await;
    let v = c
        .controller
        .create_volume(req::create("over-mtls", req::MIB, &[]))
        .await
        .expect("the controller talks mTLS");
    assert!(v
        .into_inner()
        .volume
        .unwrap()
        .volume_id
        .ends_with(":over-mtls"));

    let pki = d.pki.as_ref().unwrap();
    let (ok, out) = d.poolctl(&["pool-list"]);
    assert!(
        ok && out.contains("unreachable"),
        "plain text must not get an answer: {out}"
    );
    assert!(!out.contains("running"), "{out}");
    let rogue: Vec<String> = pki.flags(&pki.rogue);
    let mut args: Vec<&str> = rogue.iter().map(String::as_str).collect();
    args.push("pool-list");
    let (_, out) = d.poolctl(&args);
    assert!(
        out.contains("unreachable") && !out.contains("running"),
        "a certificate from another CA must be refused: {out}"
    );
    let good: Vec<String> = pki.flags(&pki.client);
    let mut args: Vec<&str> = good.iter().map(String::as_str).collect();
    args.push("pool-list");
    let (ok, out) = d.poolctl(&args);
    assert!(
        ok && out
            .lines()
            .any(|l| l.contains("scratch") && l.contains("running")),
        "{out}"
    );
}
