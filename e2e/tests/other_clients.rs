//! The CSI sockets answer gRPC clients other than Go's. Python's grpcio
//! sends the socket path as the HTTP/2 `:authority` on a unix socket, which
//! an HTTP/2 server refuses as malformed unless it is told otherwise; the
//! driver accepts any authority there. The client is the real grpcio from
//! the checkout's .venv (dev/setup).

use pool_csi_e2e::{require, Driver, Options};
use std::path::Path;

/// Probe and GetPluginInfo through grpcio, with its default authority.
const CLIENT: &str = r#"
import sys, grpc
for sock in sys.argv[1:]:
    ch = grpc.insecure_channel("unix://" + sock)
    for method in ("Probe", "GetPluginInfo"):
        call = ch.unary_unary("/csi.v1.Identity/" + method,
                              request_serializer=lambda x: b"",
                              response_deserializer=lambda b: b)
        reply = call(None, timeout=10)
        print(sock, method, "ok", reply.hex())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_talks_to_both_sockets() {
    require!(false);
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let has_grpcio = python.exists()
        && pool_csi_e2e::tool(python.to_str().unwrap(), &["-c", "import grpc"])
            .status
            .success();
    if !has_grpcio {
        pool_csi_e2e::skip("grpcio", "needs Python's grpcio in .venv (run dev/setup)");
        return;
    }
    let d = Driver::start(Options::default()).await;
    let out = pool_csi_e2e::tool(
        python.to_str().unwrap(),
        &[
            "-c",
            CLIENT,
            d.node_sock.to_str().unwrap(),
            d.ctrl_sock.to_str().unwrap(),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert_eq!(text.matches(" ok ").count(), 4, "{text}");
    // GetPluginInfo carries the driver's name.
    assert!(text.contains(&hex("pool-csi.io")), "{text}");
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
