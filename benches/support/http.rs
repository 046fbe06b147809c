//! A minimal HTTP/1.1 keep-alive client over tokio `TcpStream`: the load generator.
//!
//! Hand-written rather than reqwest: the bench machine has 2 cores, so the client
//! competes with the servers, and reqwest/hyper's per-request work (connection pool,
//! header maps, body streams) would take a large share of the box.

use std::fmt::{Display, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 512 * 1024 * 1024;
/// Most chunks read from one chunked body.
const MAX_CHUNKS: usize = 1_000_000;
/// Longest wait for a server to start answering.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one answer while waiting for a server to start.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// The JSON content type, for request bodies.
pub const JSON: (&str, &str) = ("Content-Type", "application/json");

/// The bytes of one request; `Content-Length` unless a GET without a body.
pub fn request(
    method: &str,
    path: &str,
    host: impl Display,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (name, value) in headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if !body.is_empty() || method != "GET" {
        let _ = write!(head, "Content-Length: {}\r\n", body.len());
    }
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    req.extend_from_slice(body);
    req
}

/// `text` with everything but unreserved characters percent-encoded.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `(id, lease)` from switchboard's answer to a registration.
pub fn parse_registration(body: &[u8]) -> Result<(String, String), String> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!("registration answer is not JSON: {e}"))?;
    let field = |name: &str| v.get(name).and_then(|x| x.as_str()).map(str::to_owned);
    match (field("id"), field("lease")) {
        (Some(id), Some(lease)) => Ok((id, lease)),
        _ => Err(format!(
            "registration answer without id/lease: {}",
            String::from_utf8_lossy(body)
        )),
    }
}

/// Port of every bench instance's address.
pub const INSTANCE_PORT: u16 = 6666;

/// The IP of bench instance `i`: `10.a.b.c`, distinct for each `i` below 15,625,000
/// (250³), host byte never 0. Nothing listens there: the benches only register it.
pub fn instance_ip(i: usize) -> String {
    let a = (i / 62_500) % 250;
    let b = (i / 250) % 250;
    let c = i % 250 + 1;
    format!("10.{a}.{b}.{c}")
}

/// `10.a.b.c:6666`: [`instance_ip`] with [`INSTANCE_PORT`].
pub fn instance_address(i: usize) -> String {
    format!("{}:{INSTANCE_PORT}", instance_ip(i))
}

/// One keep-alive connection.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One answer.
pub struct Answer {
    pub status: u16,
    /// Body bytes, only when asked for.
    pub body: Vec<u8>,
    /// The server said `Connection: close` (or gave no length): do not reuse.
    pub close: bool,
}

fn bad(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        if self.buf.capacity() - self.buf.len() < 8 * 1024 {
            self.buf.reserve(64 * 1024);
        }
        if self.stream.read_buf(&mut self.buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed by the server",
            ));
        }
        Ok(())
    }

    async fn fill_to(&mut self, len: usize) -> std::io::Result<()> {
        if len > self.buf.capacity() {
            self.buf.reserve(len - self.buf.len());
        }
        while self.buf.len() < len {
            self.read_more().await?;
        }
        Ok(())
    }

    /// Sends one request and reads its whole answer. Callers bound it with a timeout.
    pub async fn request(&mut self, req: &[u8], keep_body: bool) -> std::io::Result<Answer> {
        self.stream.write_all(req).await?;
        self.buf.clear();
        let head_end = loop {
            if let Some(p) = find(&self.buf, b"\r\n\r\n") {
                break p + 4;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("response head too large"));
            }
            self.read_more().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("non-UTF-8 head"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let mut content_length = None;
        let mut chunked = false;
        let mut close = status_line.starts_with("HTTP/1.0");
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                let len = value.parse::<usize>();
                content_length = Some(len.map_err(|_| bad("bad Content-Length"))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = value.to_ascii_lowercase().contains("chunked");
            } else if name.eq_ignore_ascii_case("connection") {
                let v = value.to_ascii_lowercase();
                if v.contains("close") {
                    close = true;
                } else if v.contains("keep-alive") {
                    close = false;
                }
            }
        }
        let mut body = Vec::new();
        if status == 204 || status == 304 || (100..200).contains(&status) {
            // No body.
        } else if chunked {
            self.read_chunked(head_end, keep_body, &mut body).await?;
        } else if let Some(len) = content_length {
            if len > MAX_BODY {
                return Err(bad("body too large"));
            }
            self.fill_to(head_end + len).await?;
            if keep_body {
                body.extend_from_slice(&self.buf[head_end..head_end + len]);
            }
        } else {
            // Length given by the end of the connection.
            close = true;
            loop {
                if self.buf.len() - head_end > MAX_BODY {
                    return Err(bad("body too large"));
                }
                match self.read_more().await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                    Err(e) => return Err(e),
                }
            }
            if keep_body {
                body.extend_from_slice(&self.buf[head_end..]);
            }
        }
        Ok(Answer {
            status,
            body,
            close,
        })
    }

    async fn read_chunked(
        &mut self,
        mut pos: usize,
        keep_body: bool,
        body: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let mut total = 0usize;
        for _ in 0..MAX_CHUNKS {
            let line_end = loop {
                if let Some(p) = find(&self.buf[pos..], b"\r\n") {
                    break pos + p;
                }
                if self.buf.len() - pos > 1024 {
                    return Err(bad("chunk size line too long"));
                }
                self.read_more().await?;
            };
            let size_text =
                std::str::from_utf8(&self.buf[pos..line_end]).map_err(|_| bad("bad chunk size"))?;
            let size_text = size_text.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_text, 16)
                .map_err(|_| bad(format!("bad chunk size {size_text:?}")))?;
            let data = line_end + 2;
            if size == 0 {
                // No trailers expected: the final CRLF.
                return self.fill_to(data + 2).await;
            }
            total += size;
            if total > MAX_BODY {
                return Err(bad("body too large"));
            }
            self.fill_to(data + size + 2).await?;
            if keep_body {
                body.extend_from_slice(&self.buf[data..data + size]);
            }
            pos = data + size + 2;
        }
        Err(bad("too many chunks"))
    }
}

/// One request on `conn` (connected first when `None`), bounded by `timeout`; the
/// connection is dropped after an error or a close.
pub async fn call(
    conn: &mut Option<Conn>,
    addr: SocketAddr,
    req: &[u8],
    keep_body: bool,
    timeout: Duration,
) -> Result<Answer, String> {
    let fut = async {
        if conn.is_none() {
            *conn = Some(Conn::connect(addr).await?);
        }
        match conn.as_mut() {
            Some(c) => c.request(req, keep_body).await,
            None => Err(bad("no connection")),
        }
    };
    let outcome = match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    if !matches!(&outcome, Ok(a) if !a.close) {
        *conn = None;
    }
    outcome
}

/// One request on a fresh connection, body kept, for set-up and checks.
pub async fn one_shot(addr: SocketAddr, req: &[u8], timeout: Duration) -> anyhow::Result<Answer> {
    call(&mut None, addr, req, true, timeout)
        .await
        .map_err(|e| anyhow!(e))
}

/// [`one_shot`] outside any runtime (on a runtime of its own).
pub fn one_shot_blocking(
    addr: SocketAddr,
    req: &[u8],
    timeout: Duration,
) -> anyhow::Result<Answer> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(one_shot(addr, req, timeout))
}

/// Sends `req` on a fresh connection every `poll` until it answers 200, for at most
/// [`START_TIMEOUT`].
pub async fn wait_ready(addr: SocketAddr, req: &[u8], poll: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    for _ in 0..100_000 {
        if started.elapsed() > START_TIMEOUT {
            break;
        }
        match one_shot(addr, req, PROBE_TIMEOUT).await {
            Ok(a) if a.status == 200 => return Ok(()),
            Ok(a) => last = format!("status {}", a.status),
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(poll).await;
    }
    bail!("server at {addr} not ready within {START_TIMEOUT:?}: {last}")
}
