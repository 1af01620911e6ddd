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

/// The other direction: an impostor answering at an agent's address with a
/// certificate from another CA is refused by the controller's client
/// (poolctl shares it) during the handshake — it aborts (an "unknown CA"
/// alert, or a close) and sends nothing. The same impostor holding a certificate of the
/// cluster CA completes the handshake, so the refusal is the certificate's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_refuses_an_agent_with_a_certificate_from_another_ca() {
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
    let pki = d.pki.as_ref().unwrap();
    let impostor = |pair: &(std::path::PathBuf, std::path::PathBuf)| {
        let port = pool_csi_e2e::unused_port();
        #[allow(clippy::disallowed_methods)] // a stand-in server, not driver code
        let mut server = std::process::Command::new("openssl")
            .args(["s_server", "-accept", &format!("127.0.0.1:{port}"), "-cert"])
            .arg(&pair.0)
            .arg("-key")
            .arg(&pair.1)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "s_server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let good: Vec<String> = pki.flags(&pki.client);
        let agent = format!("--agent=impostor=127.0.0.1:{port}");
        let mut args: Vec<&str> = vec![&agent];
        args.extend(good.iter().map(String::as_str));
        args.push("pool-list");
        let out = pool_csi_e2e::tool(
            pool_csi_e2e::bin_dir().join("poolctl").to_str().unwrap(),
            &args,
        );
        // Let s_server finish reporting the handshake before it goes.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let _ = server.kill();
        let log = server.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&log.stdout).to_string()
                + &String::from_utf8_lossy(&log.stderr),
        )
    };
    let (client, server) = impostor(&pki.rogue);
    assert!(
        client.contains("unreachable") && !client.contains("running"),
        "{client}"
    );
    // s_server prints the cipher once a handshake completes; the client
    // aborts this one (with an "unknown ca" alert, or by closing first).
    assert!(
        !server.contains("CIPHER is"),
        "the client aborts the handshake: {server}"
    );
    let lower = server.to_lowercase();
    assert!(
        lower.contains("unknown ca") || lower.contains("unexpected eof"),
        "{server}"
    );
    let (_, server) = impostor(&pki.agent);
    assert!(
        server.contains("CIPHER is"),
        "a certificate of the cluster CA completes the handshake: {server}"
    );
}
