//! The agent's unix sockets: the CNI socket (`socketPath`, [`fibril_core::cni_api`] framing)
//! and the status socket. Both are root-only twice over: the socket file is mode 0600, and
//! every connection's peer credentials (SO_PEERCRED) must be uid 0.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fibril_core::cni_api::{
    code, decode_frame, encode_frame, AgentError, CniRequest, CniResponse, MAX_MESSAGE_BYTES,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};

use crate::agent::Agent;

/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("another agent is already listening on {}", path.display())]
    InUse { path: PathBuf },
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `path` for root only, replacing a stale socket (one nobody answers on).
pub fn bind_root_only(path: &Path) -> Result<UnixListener, SocketError> {
    let io = |op| {
        move |source| SocketError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the directory of"))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(SocketError::InUse {
            path: path.to_path_buf(),
        });
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("removing the stale socket")(e)),
    }
    let l = UnixListener::bind(path).map_err(io("binding"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("restricting"))?;
    Ok(l)
}

/// The peer's uid, refused unless root.
fn peer_is_root(s: &UnixStream) -> Result<(), String> {
    match s.peer_cred() {
        Ok(c) if c.uid() == 0 => Ok(()),
        Ok(c) => Err(format!(
            "refused a connection from uid {} (pid {:?}): only root may use the fibril agent",
            c.uid(),
            c.pid()
        )),
        Err(e) => Err(format!("cannot read the peer's credentials: {e}")),
    }
}

/// Reads one request: up to a newline or EOF, bounded.
async fn read_frame(s: &mut UnixStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.contains(&b'\n') || buf.len() > MAX_MESSAGE_BYTES {
            return Ok(buf);
        }
    }
}

/// Serves the CNI socket until the task is dropped.
pub async fn serve_cni(listener: UnixListener, agent: Arc<Agent>) {
    loop {
        let (mut s, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "CNI socket accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            if let Err(why) = peer_is_root(&s) {
                tracing::warn!("{why}");
                return;
            }
            let resp = match tokio::time::timeout(READ_TIMEOUT, read_frame(&mut s)).await {
                Err(_) => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "reading a CNI request");
                    return;
                }
                Ok(Ok(bytes)) => match decode_frame::<CniRequest>(&bytes) {
                    Err(e) => CniResponse::Error(AgentError {
                        code: code::PROTOCOL_MISMATCH,
                        msg: format!("the agent could not decode the request: {e}"),
                        details: String::new(),
                    }),
                    Ok(req) => {
                        let command = req.op.command();
                        match tokio::task::spawn_blocking(move || agent.handle(req)).await {
                            Ok(r) => r,
                            Err(e) => CniResponse::Error(AgentError {
                                code: crate::agent::INTERNAL_FAILURE,
                                msg: format!("the agent failed serving {command}: {e}"),
                                details: String::new(),
                            }),
                        }
                    }
                },
            };
            let _ = s.write_all(&encode_frame(&resp)).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Serves the status socket: every connection gets one JSON document, then EOF.
pub async fn serve_status<F>(listener: UnixListener, status: F)
where
    F: Fn() -> serde_json::Value + Send + Sync + Clone + 'static,
{
    loop {
        let (mut s, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "status socket accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            if let Err(why) = peer_is_root(&s) {
                tracing::warn!("{why}");
                return;
            }
            let doc = tokio::task::spawn_blocking(status)
                .await
                .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()}));
            let mut bytes = serde_json::to_vec(&doc).unwrap_or_default();
            bytes.push(b'\n');
            let _ = s.write_all(&bytes).await;
            let _ = s.shutdown().await;
        });
    }
}

/// Sends one CNI request to the agent at `socket` and returns its answer (for tests and
/// tools; the plugin has its own synchronous client).
pub async fn cni_call(socket: &Path, req: &CniRequest) -> std::io::Result<CniResponse> {
    let mut s = UnixStream::connect(socket).await?;
    s.write_all(&encode_frame(req)).await?;
    s.shutdown().await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    decode_frame(&buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}
