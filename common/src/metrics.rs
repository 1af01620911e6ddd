//! Prometheus metrics: a tower layer that counts every gRPC call by method
//! and status code with a latency histogram, and a minimal `/metrics` HTTP
//! endpoint (text exposition format) that can append component gauges.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::codegen::http;

/// Latency bucket bounds in seconds.
const BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0, 5.0, 30.0,
];

#[derive(Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Call counts and latencies, shared by the layer and the endpoint.
#[derive(Clone, Default)]
pub struct Registry {
    component: &'static str,
    rpcs: Arc<Mutex<BTreeMap<(String, String), Series>>>,
}

impl Registry {
    pub fn new(component: &'static str) -> Self {
        Self {
            component,
            rpcs: Default::default(),
        }
    }

    /// Records one finished call.
    pub fn observe(&self, method: &str, code: &str, took: Duration) {
        let secs = took.as_secs_f64();
        let mut rpcs = self.rpcs.lock().unwrap_or_else(|p| p.into_inner());
        let s = rpcs
            .entry((method.to_string(), code.to_string()))
            .or_default();
        s.count += 1;
        s.sum += secs;
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                s.buckets[i] += 1;
            }
        }
    }

    /// The exposition text for the RPC series.
    pub fn render(&self) -> String {
        let rpcs = self.rpcs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        let c = self.component;
        out.push_str("# HELP pool_csi_rpc_total gRPC calls served, by method and status code.\n# TYPE pool_csi_rpc_total counter\n");
        for ((m, code), s) in &rpcs {
            let _ = writeln!(
                out,
                "pool_csi_rpc_total{{component=\"{c}\",method=\"{m}\",code=\"{code}\"}} {}",
                s.count
            );
        }
        out.push_str("# HELP pool_csi_rpc_duration_seconds gRPC call latency.\n# TYPE pool_csi_rpc_duration_seconds histogram\n");
        for ((m, code), s) in &rpcs {
            let labels = format!("component=\"{c}\",method=\"{m}\",code=\"{code}\"");
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "pool_csi_rpc_duration_seconds_bucket{{{labels},le=\"{b}\"}} {}",
                    s.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "pool_csi_rpc_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "pool_csi_rpc_duration_seconds_sum{{{labels}}} {}",
                s.sum
            );
            let _ = writeln!(
                out,
                "pool_csi_rpc_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out
    }
}

/// Wraps a tonic server's service to record every call in a [`Registry`].
#[derive(Clone)]
pub struct MetricsLayer(pub Registry);

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            registry: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    registry: Registry,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let registry = self.registry.clone();
        let start = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            // An error status comes in the headers ("trailers-only"); a
            // success carries grpc-status 0 in the trailers.
            let code = match &r {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or("Ok".to_string(), |c| format!("{:?}", tonic::Code::from(c))),
                Err(_) => "TransportError".to_string(),
            };
            registry.observe(&method, &code, start.elapsed());
            r
        })
    }
}

/// Extra text appended to `/metrics` (component gauges), computed per scrape.
pub type Extra = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

/// Serves `GET /metrics` (and `GET /healthz`) over plain HTTP/1.1 until the
/// process ends. One small request per connection is all Prometheus sends.
pub async fn serve(
    addr: std::net::SocketAddr,
    registry: Registry,
    extra: Option<Extra>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (mut sock, _) = listener.accept().await?;
        let (registry, extra) = (registry.clone(), extra.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut n = 0;
            while n < buf.len() {
                match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf[n..])).await {
                    Ok(Ok(0)) | Err(_) | Ok(Err(_)) => return,
                    Ok(Ok(k)) => n += k,
                }
                if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics") {
                let mut body = registry.render();
                if let Some(f) = extra {
                    body.push_str(&f().await);
                }
                ("200 OK", body)
            } else if head.starts_with("GET /healthz") {
                ("200 OK", "ok\n".to_string())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counts_and_buckets() {
        let r = Registry::new("node");
        r.observe(
            "/csi.v1.Node/NodeStageVolume",
            "Ok",
            Duration::from_micros(300),
        );
        r.observe(
            "/csi.v1.Node/NodeStageVolume",
            "Ok",
            Duration::from_millis(2),
        );
        r.observe(
            "/csi.v1.Node/NodeStageVolume",
            "NotFound",
            Duration::from_micros(50),
        );
        let text = r.render();
        assert!(text.contains("pool_csi_rpc_total{component=\"node\",method=\"/csi.v1.Node/NodeStageVolume\",code=\"Ok\"} 2"), "{text}");
        assert!(text.contains("code=\"Ok\",le=\"0.0005\"} 1"), "{text}");
        assert!(text.contains("code=\"Ok\",le=\"0.0025\"} 2"), "{text}");
        assert!(text.contains("code=\"NotFound\",le=\"+Inf\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn endpoint_answers_metrics_and_404() {
        let r = Registry::new("controller");
        r.observe("/x", "Ok", Duration::from_millis(1));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let extra: Extra = Arc::new(|| Box::pin(async { "pool_csi_extra 1\n".to_string() }));
        tokio::spawn(serve(port, r, Some(extra)));
        let get = |path: &'static str| async move {
            for _ in 0..50 {
                if let Ok(mut s) = tokio::net::TcpStream::connect(port).await {
                    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                        .await
                        .unwrap();
                    let mut out = String::new();
                    s.read_to_string(&mut out).await.unwrap();
                    return out;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("endpoint never came up");
        };
        let m = get("/metrics").await;
        assert!(
            m.starts_with("HTTP/1.1 200")
                && m.contains("pool_csi_rpc_total")
                && m.contains("pool_csi_extra 1"),
            "{m}"
        );
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
    }
}
