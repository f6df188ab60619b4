//! The blocking client side of [`fibril_core::cni_api`]: one request per connection over the
//! agent's unix socket, bounded by one deadline for connect, write and read together.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fibril_core::cni_api::{
    decode_frame, encode_frame, CniRequest, CniResponse, FrameError, MAX_MESSAGE_BYTES,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens (no socket, refused, no permission): the agent is not ready.
    #[error("{}: {source}", socket.display())]
    Connect { socket: PathBuf, source: io::Error },
    #[error("no answer from the fibril agent at {} within {}s", socket.display(), timeout.as_secs_f32())]
    Timeout { socket: PathBuf, timeout: Duration },
    #[error("lost the connection to the fibril agent at {} before its answer: {source}", socket.display())]
    Io { socket: PathBuf, source: io::Error },
    #[error("the fibril agent at {} closed the connection without answering", socket.display())]
    NoAnswer { socket: PathBuf },
    #[error("the fibril agent at {} sent an invalid answer: {source}", socket.display())]
    Protocol { socket: PathBuf, source: FrameError },
}

#[derive(Clone, Debug)]
pub struct AgentClient {
    socket: PathBuf,
    timeout: Duration,
}

impl AgentClient {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends `request` and waits for the answer, all within the client's timeout.
    pub fn call(&self, request: &CniRequest) -> Result<CniResponse, ClientError> {
        let deadline = Instant::now() + self.timeout;
        let mut stream = self.connect(deadline)?;

        self.set_timeout(&stream, deadline, UnixStream::set_write_timeout)?;
        match stream.write_all(&encode_frame(request)) {
            Ok(()) => {
                // EOF tells an agent that reads to the end that the request is complete.
                let _ = stream.shutdown(Shutdown::Write);
            }
            // The agent may have answered (an error) without reading everything: read it.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(self.io_error(e)),
        }

        let mut buf = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            self.set_timeout(&stream, deadline, UnixStream::set_read_timeout)?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    let seen = buf.len();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = buf[seen..].iter().position(|b| *b == b'\n') {
                        buf.truncate(seen + end + 1);
                        break;
                    }
                    if buf.len() > MAX_MESSAGE_BYTES {
                        return Err(ClientError::Protocol {
                            socket: self.socket.clone(),
                            source: FrameError::TooLarge { len: buf.len() },
                        });
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(e)),
            }
        }
        if buf.is_empty() {
            return Err(ClientError::NoAnswer {
                socket: self.socket.clone(),
            });
        }
        decode_frame(&buf).map_err(|source| ClientError::Protocol {
            socket: self.socket.clone(),
            source,
        })
    }

    /// `connect(2)` on a unix socket blocks while the listener's backlog is full, and std has
    /// no connect timeout for unix sockets: connect on a helper thread and stop waiting at the
    /// deadline (the process exits soon after, taking the thread with it).
    fn connect(&self, deadline: Instant) -> Result<UnixStream, ClientError> {
        let (tx, rx) = mpsc::channel();
        let path = self.socket.clone();
        thread::spawn(move || {
            let _ = tx.send(UnixStream::connect(path));
        });
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(ClientError::Connect {
                socket: self.socket.clone(),
                source,
            }),
            Err(_) => Err(self.timeout_error()),
        }
    }

    fn set_timeout(
        &self,
        stream: &UnixStream,
        deadline: Instant,
        set: fn(&UnixStream, Option<Duration>) -> io::Result<()>,
    ) -> Result<(), ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timeout_error());
        }
        set(stream, Some(left)).map_err(|e| self.io_error(e))
    }

    fn io_error(&self, source: io::Error) -> ClientError {
        match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timeout_error(),
            _ => ClientError::Io {
                socket: self.socket.clone(),
                source,
            },
        }
    }

    fn timeout_error(&self) -> ClientError {
        ClientError::Timeout {
            socket: self.socket.clone(),
            timeout: self.timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fibril_core::cni_api::{CniOp, CniVersion, PROTOCOL_VERSION};
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    fn status() -> CniRequest {
        CniRequest {
            protocol: PROTOCOL_VERSION,
            cni_version: CniVersion::V1_1_0,
            op: CniOp::Status,
            config: serde_json::json!({}),
        }
    }

    /// Serves one connection with `answer`, returning the request line it read.
    fn serve_once(
        answer: &'static [u8],
    ) -> (tempfile::TempDir, PathBuf, thread::JoinHandle<String>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            io::BufReader::new(&stream).read_line(&mut line).unwrap();
            (&stream).write_all(answer).unwrap();
            line
        });
        (dir, path, handle)
    }

    #[test]
    fn round_trip() {
        let (_dir, path, handle) = serve_once(b"{\"ok\":null}\n");
        let client = AgentClient::new(&path, Duration::from_secs(5));
        assert_eq!(client.call(&status()).unwrap(), CniResponse::Ok(None));
        let line = handle.join().unwrap();
        assert!(line.ends_with('\n'));
        assert_eq!(
            decode_frame::<CniRequest>(line.as_bytes()).unwrap(),
            status()
        );
    }

    #[test]
    fn answer_without_newline_before_eof_is_accepted() {
        let (_dir, path, _h) = serve_once(b"{\"ok\":null}");
        let client = AgentClient::new(&path, Duration::from_secs(5));
        assert_eq!(client.call(&status()).unwrap(), CniResponse::Ok(None));
    }

    #[test]
    fn failures_are_classified() {
        let dir = tempfile::tempdir().unwrap();
        let missing = AgentClient::new(dir.path().join("none.sock"), Duration::from_secs(1));
        assert!(matches!(
            missing.call(&status()),
            Err(ClientError::Connect { .. })
        ));

        let (_d, path, _h) = serve_once(b"");
        let silent = AgentClient::new(&path, Duration::from_secs(5));
        assert!(matches!(
            silent.call(&status()),
            Err(ClientError::NoAnswer { .. })
        ));

        let (_d, path, _h) = serve_once(b"garbage\n");
        let bad = AgentClient::new(&path, Duration::from_secs(5));
        assert!(matches!(
            bad.call(&status()),
            Err(ClientError::Protocol { .. })
        ));
    }

    #[test]
    fn slow_agent_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        // Accepts (the kernel does, via the backlog) but never answers.
        let _listener = UnixListener::bind(&path).unwrap();
        let client = AgentClient::new(&path, Duration::from_millis(200));
        let started = Instant::now();
        assert!(matches!(
            client.call(&status()),
            Err(ClientError::Timeout { .. })
        ));
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
