//! The service health server: each `healthCheckNodePort` of this node's translation, served
//! in the node's network namespace as kube-proxy serves it.
//!
//! A load balancer in front of an `externalTrafficPolicy: Local` Service probes every
//! node's health check port and sends traffic only to nodes that answer 200: those with a
//! local ready endpoint. The answer is kube-proxy's: 200 or 503, a JSON body naming the
//! Service and its local endpoint count, and `X-Load-Balancing-Endpoint-Weight`. Any path
//! is answered (kube-proxy's handler is the root of its mux).
//!
//! The listeners are opened in the node's netns ([`NetNs::run`]) and served by the agent's
//! runtime; the count behind each is updated by every sync, without reopening it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use fibril_core::services::translate::HealthCheck;
use fibril_netlink::NetNs;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The largest request head read before answering anyway.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The status line and body kube-proxy answers for `hc`.
pub fn response(hc: &HealthCheck) -> String {
    let body = serde_json::json!({
        "service": {"namespace": hc.service.namespace, "name": hc.service.name},
        "localEndpoints": hc.local_endpoints,
        "serviceProxyHealthy": true,
    })
    .to_string();
    let status = if hc.healthy() {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nX-Content-Type-Options: \
         nosniff\r\nX-Load-Balancing-Endpoint-Weight: {}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        hc.local_endpoints,
        body.len()
    )
}

struct Served {
    state: Arc<Mutex<HealthCheck>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The health check listeners of one node.
pub struct HealthServer {
    netns: NetNs,
    served: BTreeMap<u16, Served>,
}

impl HealthServer {
    pub fn new(netns: NetNs) -> Self {
        HealthServer {
            netns,
            served: BTreeMap::new(),
        }
    }

    /// The ports listened on.
    pub fn ports(&self) -> Vec<u16> {
        self.served.keys().copied().collect()
    }

    /// Serves exactly `checks`: closes the ports no longer wanted, updates the counts of
    /// the others, opens new ones. Returns a problem for each port that cannot be opened
    /// (it is tried again at the next sync). Must run inside the tokio runtime.
    pub fn sync(&mut self, checks: &[HealthCheck]) -> Vec<String> {
        let wanted: BTreeMap<u16, &HealthCheck> = checks.iter().map(|h| (h.port, h)).collect();
        self.served.retain(|port, _| wanted.contains_key(port));
        let mut problems = Vec::new();
        for (port, hc) in wanted {
            if let Some(s) = self.served.get(&port) {
                *s.state.lock().unwrap_or_else(PoisonError::into_inner) = hc.clone();
                continue;
            }
            match self.open(port) {
                Ok(listener) => {
                    let state = Arc::new(Mutex::new(hc.clone()));
                    tracing::info!(service = %hc.service, port, "serving the health check node port");
                    let task = tokio::spawn(serve(listener, state.clone()));
                    self.served.insert(port, Served { state, task });
                }
                Err(e) => problems.push(format!(
                    "Service {} spec.healthCheckNodePort: cannot listen on 0.0.0.0:{port} in \
                     the node's network namespace {}: {e}",
                    hc.service,
                    self.netns.name()
                )),
            }
        }
        problems
    }

    fn open(&self, port: u16) -> std::io::Result<tokio::net::TcpListener> {
        let l = self
            .netns
            .run(|| std::net::TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|e| std::io::Error::other(e.to_string()))??;
        l.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(l)
    }
}

async fn serve(listener: tokio::net::TcpListener, state: Arc<Mutex<HealthCheck>>) {
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "health check port: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(READ_TIMEOUT, async {
                while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                true
            })
            .await;
            if read != Ok(true) {
                return;
            }
            let answer = response(&state.lock().unwrap_or_else(PoisonError::into_inner));
            let _ = conn.write_all(answer.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fibril_core::services::ServiceName;

    fn hc(n: usize) -> HealthCheck {
        HealthCheck {
            port: 31500,
            service: ServiceName {
                namespace: "demo".into(),
                name: "web".into(),
            },
            local_endpoints: n,
        }
    }

    #[test]
    fn answers_200_with_local_endpoints_and_503_without() {
        let ok = response(&hc(2));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("X-Load-Balancing-Endpoint-Weight: 2\r\n"),
            "{ok}"
        );
        let body: serde_json::Value =
            serde_json::from_str(ok.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"service": {"namespace": "demo", "name": "web"},
                "localEndpoints": 2, "serviceProxyHealthy": true})
        );
        let down = response(&hc(0));
        assert!(
            down.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{down}"
        );
        let len: usize = down
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(len, down.split("\r\n\r\n").nth(1).unwrap().len());
    }
}
