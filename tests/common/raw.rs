//! Raw HTTP/1.1 on a real socket: write bytes, read whole responses (head and
//! Content-Length body) or the close, each read bounded by [`super::PATIENCE`].

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Options, Server};

/// One client connection and the bytes read from it but not yet taken.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more; false on EOF, reset, or nothing within PATIENCE.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout(super::PATIENCE, self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => false,
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(_) => panic!("no answer and no close within {:?}", super::PATIENCE),
        }
    }

    /// The next whole response, or `None` when the connection closed first.
    pub async fn response(&mut self) -> Option<Vec<u8>> {
        self.response_to(false).await
    }

    /// The next whole response; to a `HEAD` it has no body whatever its length says.
    pub async fn response_to(&mut self, to_head: bool) -> Option<Vec<u8>> {
        // Bounded: each pass reads at least one byte or ends.
        for _ in 0..100_000 {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |v| v.trim().parse::<usize>().expect("content-length"));
                let len = if to_head { 0 } else { len };
                let total = end + 4 + len;
                if self.buf.len() >= total {
                    return Some(self.buf.drain(..total).collect());
                }
            }
            if !self.fill().await {
                return None;
            }
        }
        panic!("a response never ended");
    }

    /// Whether the server closes the connection (EOF or reset) with nothing more.
    pub async fn closes(&mut self) -> bool {
        self.buf.is_empty() && !self.fill().await
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response with its `date` value blanked (it is the only field that moves).
pub fn normalized(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response).into_owned();
    match text.find("\r\ndate: ") {
        Some(at) => {
            let start = at + 8;
            let end = text[start..].find("\r\n").map_or(text.len(), |e| start + e);
            format!("{}<date>{}", &text[..start], &text[end..])
        }
        None => text,
    }
}

/// Sends `request` on a new connection; the answer, then what a `GET /healthz` on
/// the same connection gets (its answer, or `closed`): the keep-alive decision too.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut conn = Conn::open(addr).await;
    conn.send(request).await;
    let first = match conn.response_to(request.starts_with(b"HEAD ")).await {
        Some(r) => normalized(&r),
        None => "<closed>".to_owned(),
    };
    // The server may have closed already; a failed write then reads as a close.
    let _ = conn
        .stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let next = match conn.response().await {
        Some(r) => normalized(&r),
        None => "<closed>".to_owned(),
    };
    (first, next)
}

/// Where an in-process server's API listens.
pub fn addr(s: &Server) -> SocketAddr {
    s.url("")
        .trim_start_matches("http://")
        .parse()
        .expect("addr")
}

/// Two in-process servers on `config`: one with the fast path, one answering every
/// request through hyper, to compare the two.
pub async fn fast_and_hyper(config: &str) -> (Server, Server) {
    let fast = Server::start_with(Options {
        config: Some(config.into()),
        ..Options::default()
    })
    .await;
    let slow = Server::start_with(Options {
        config: Some(config.into()),
        no_fast_path: true,
        ..Options::default()
    })
    .await;
    (fast, slow)
}
