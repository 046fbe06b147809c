//! Edge benchmark (issue 24): a TLS-terminating forward listener against nginx 1.22
//! `stream` (`listen … ssl`, OpenSSL 3) and HAProxy 2.6 (`bind … ssl crt`, `mode tcp`)
//! on the same certificate, under the same client, in the same run, loopback only.
//!
//! ```text
//! cargo bench --bench edge
//! SB_BENCH_SECS=10 SB_BENCH_IDLE_CONNS=5000 cargo bench --bench edge
//! ```
//!
//! Setup: the tls bench's certificates (`tls/pki.rs`: ECDSA P-256, made at run time)
//! and its client (`tls/load.rs`: rustls on ring, TLS 1.3, verifying the chain). Two
//! backends in the bench's process: an HTTP/1.1 responder (a 2-byte 200 to every
//! request, kept alive) and a sink (reads and discards). Each proxy terminates TLS on
//! two ports, one before each backend: switchboard (`[[forward]]` with `tls_cert`, the
//! backends as `[[static]]` instances); nginx (`daemon off; master_process off;
//! worker_processes 1;`, `stream { server { listen … ssl; proxy_pass …; } }`, its
//! session tickets on by default); HAProxy (`-db`, `nbthread 1`, `mode tcp`, `bind …
//! ssl crt`, tickets on by default). nginx and HAProxy run one thread; switchboard its
//! default (a worker per core). Every figure is per CPU second of the proxy's own
//! process (utime+stime from `/proc`, every thread), so thread counts do not favour
//! anyone; a fresh proxy process per setup, memory measured first.
//!
//! Phases, `SB_BENCH_SECS` each:
//! 1. memory: `SB_BENCH_IDLE_CONNS` TLS connections through the responder's port,
//!    one request each, held idle for a second: the proxy's RSS growth per connection;
//! 2. a new connection per request, resumption off (every handshake a full TLS 1.3
//!    one): handshakes per proxy CPU second;
//! 3. the same with resumption on (the client counts the handshakes that resumed);
//! 4. throughput into the sink over TLS, 1 and 8 streams: MiB/s and proxy CPU per GiB;
//! 5. half-open flood: `SB_BENCH_IDLE_CONNS` connections to the terminating port and as
//!    many to the SNI port, each sending a ClientHello record that promises 8 KiB and
//!    stops after 2 KiB, then nothing: RSS growth per such connection while they are
//!    held, and what is left once they are all closed; twice, so memory the allocator
//!    keeps for reuse is told from memory that grows with every flood;
//! 6. SNI passthrough: a third port routes by the ClientHello's server name without
//!    terminating (switchboard `sni_routes`, nginx `ssl_preread` with a `map`, HAProxy
//!    `req_ssl_sni`) to a TLS responder in the bench's process (rustls, the same
//!    certificate); a new connection and full handshake per request, as in 2: the
//!    proxy's CPU per connection, which reads the hello and relays.
//!
//! Goals, printed as met or MISSED, never asserted: full handshakes per CPU second ≥
//! 1.3 × nginx's; resumed ≥ 1.5 × nginx's; throughput ≥ 1.2 × nginx's; RSS per idle
//! TLS connection ≤ 0.5 × nginx's. Beside RSS, the kernel's memory for the proxy's
//! sockets of the idle connections (`skmem` r + w + f of `ss -tmnO`: its port's client
//! sides, and its sockets to the responder).
//!
//! Knobs: `SB_BENCH_BIN`, `SB_BENCH_SETUPS` (comma list of `switchboard,nginx,haproxy`),
//! `SB_BENCH_SECS` (5), `SB_BENCH_CONNS` (16),
//! `SB_BENCH_IDLE_CONNS` (2000), `SB_BENCH_CLIENT_THREADS` (1). A proxy that is not
//! installed (`apt-get install -y nginx-light libnginx-mod-stream haproxy`) leaves its
//! column empty.

// The tls bench's client; its plain-HTTP and kept-alive parts are that bench's.
#[path = "tls/load.rs"]
#[allow(dead_code)]
mod load;
#[path = "tls/pki.rs"]
mod pki;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use load::{Counted, Target};
use support::{http, knobs, procs, sample};

/// How long held connections sit idle before RSS is read.
const SETTLE: Duration = Duration::from_secs(1);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn main() {
    if !knobs::asked_for("edge") {
        return;
    }
    let threads = knobs::count("SB_BENCH_CLIENT_THREADS", 1, 1, 16);
    knobs::block_on("edge", threads, run());
}

/// Answers every request (a head ending in a blank line) with [`ANSWER`].
async fn responder(listener: TcpListener) {
    while let Ok((mut sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let _ = sock.set_nodelay(true);
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 2048];
            loop {
                let Ok(n) = sock.read(&mut chunk).await else {
                    return;
                };
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = http::find(&buf, b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if sock.write_all(ANSWER).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
}

/// Reads and discards.
async fn sink(listener: TcpListener) {
    while let Ok((mut sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 256 * 1024];
            while let Ok(n) = sock.read(&mut chunk).await {
                if n == 0 {
                    return;
                }
            }
        });
    }
}

/// The responder behind TLS it terminates itself (the SNI passthrough's backend).
async fn tls_responder(listener: TcpListener, tls: std::sync::Arc<switchboard::tls::ServerTls>) {
    let plain = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("inner responder");
    let inner = plain.local_addr().expect("inner address");
    tokio::spawn(responder(plain));
    while let Ok((sock, _)) = listener.accept().await {
        let tls = std::sync::Arc::clone(&tls);
        tokio::spawn(async move {
            let Ok(mut stream) = tls.accept(sock, Duration::from_secs(10)).await else {
                return;
            };
            let Ok(mut back) = tokio::net::TcpStream::connect(inner).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut back).await;
        });
    }
}

/// One proxy, with its three ports: TLS before the responder, TLS before the sink,
/// and SNI passthrough before the TLS responder.
struct Proxy {
    name: &'static str,
    server: procs::Server,
    http: SocketAddr,
    sink: SocketAddr,
    sni: SocketAddr,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn start_switchboard(
    bin: &Path,
    pki: &pki::Pki,
    backends: [SocketAddr; 3],
) -> anyhow::Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let (p1, p2, p3) = (
        procs::free_port()?,
        procs::free_port()?,
        procs::free_port()?,
    );
    let config = dir.path().join("switchboard.toml");
    let mut text = String::new();
    for (port, service) in [(p1, "http"), (p2, "sink")] {
        text.push_str(&format!(
            "[[forward]]\nlisten = \"127.0.0.1:{port}\"\nservice = \"{service}\"\n\
             tls_cert = {:?}\ntls_key = {:?}\n",
            pki.cert, pki.key
        ));
    }
    text.push_str(&format!(
        "[[forward]]\nlisten = \"127.0.0.1:{p3}\"\nsni_routes = {{ \"localhost\" = \"tlsback\" }}\n"
    ));
    for (backend, service) in backends.iter().zip(["http", "sink", "tlsback"]) {
        text.push_str(&format!(
            "[[static]]\nservice = \"{service}\"\naddress = \"{backend}\"\n"
        ));
    }
    std::fs::write(&config, text)?;
    let config = config.display().to_string();
    let args = ["--db", "sqlite::memory:", "--config", config.as_str()];
    let (server, _) =
        procs::start_switchboard(Command::new(bin), dir, &args, &[], http::START_TIMEOUT)?;
    Ok(Proxy {
        name: "switchboard",
        server,
        http: loopback(p1),
        sink: loopback(p2),
        sni: loopback(p3),
    })
}

fn start_nginx(bin: &Path, pki: &pki::Pki, backends: [SocketAddr; 3]) -> anyhow::Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let (p1, p2, p3) = (
        procs::free_port()?,
        procs::free_port()?,
        procs::free_port()?,
    );
    let d = dir.path().display();
    let module = ["/usr/lib/nginx/modules/ngx_stream_module.so"]
        .into_iter()
        .find(|m| Path::new(m).exists())
        .map(|m| format!("load_module {m};\n"))
        .unwrap_or_default();
    let mut servers = String::new();
    for (port, backend) in [(p1, backends[0]), (p2, backends[1])] {
        servers.push_str(&format!(
            "    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        proxy_pass {backend};
    }}
",
            cert = pki.cert.display(),
            key = pki.key.display(),
        ));
    }
    servers.push_str(&format!(
        "    map $ssl_preread_server_name $sni_upstream {{
        localhost {b3};
        default 127.0.0.1:1;
    }}
    server {{
        listen 127.0.0.1:{p3};
        ssl_preread on;
        proxy_pass $sni_upstream;
    }}
",
        b3 = backends[2]
    ));
    let conf = format!(
        "{module}daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log crit;
events {{
    worker_connections 65536;
}}
stream {{
{servers}}}
"
    );
    let server = support::nginx::spawn(bin, dir, &conf)?;
    Ok(Proxy {
        name: "nginx",
        server,
        http: loopback(p1),
        sink: loopback(p2),
        sni: loopback(p3),
    })
}

fn start_haproxy(bin: &Path, pki: &pki::Pki, backends: [SocketAddr; 3]) -> anyhow::Result<Proxy> {
    let dir = tempfile::tempdir()?;
    let (p1, p2, p3) = (
        procs::free_port()?,
        procs::free_port()?,
        procs::free_port()?,
    );
    // HAProxy's crt: the certificate and its key in one file.
    let combined = dir.path().join("combined.pem");
    std::fs::write(
        &combined,
        format!(
            "{}{}",
            std::fs::read_to_string(&pki.cert)?,
            std::fs::read_to_string(&pki.key)?
        ),
    )?;
    let conf = format!(
        "global
    maxconn 9000
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend http
    bind 127.0.0.1:{p1} ssl crt {c} ssl-min-ver TLSv1.2
    default_backend http
backend http
    server s1 {b1}
frontend sink
    bind 127.0.0.1:{p2} ssl crt {c} ssl-min-ver TLSv1.2
    default_backend sink
backend sink
    server s1 {b2}
frontend sni
    bind 127.0.0.1:{p3}
    tcp-request inspect-delay 10s
    tcp-request content accept if {{ req_ssl_hello_type 1 }}
    use_backend sni if {{ req_ssl_sni -i localhost }}
backend sni
    server s1 {b3}
",
        c = combined.display(),
        b1 = backends[0],
        b2 = backends[1],
        b3 = backends[2],
    );
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, conf)?;
    let mut cmd = Command::new(bin);
    cmd.arg("-db").arg("-f").arg(&path).stdout(Stdio::null());
    let server = procs::Server::spawn("haproxy", cmd, dir, false)?;
    Ok(Proxy {
        name: "haproxy",
        server,
        http: loopback(p1),
        sink: loopback(p2),
        sni: loopback(p3),
    })
}

/// What one proxy did in every phase.
#[derive(Debug, Default, Clone)]
struct Figures {
    rss_kib_per_conn: f64,
    /// The kernel's memory for the proxy's two sockets of each idle connection
    /// (`skmem` r + w + f of `ss -tmnO`), KiB.
    skmem_kib_per_conn: f64,
    full_per_cpu_s: f64,
    full_rate: f64,
    resumed_per_cpu_s: f64,
    resumed_rate: f64,
    resumed_share: f64,
    /// Half-open flood, two rounds: RSS growth per held connection (KiB) over the
    /// level before the first, and the growth left after all of a round were closed.
    flood_kib_per_conn: [f64; 2],
    flood_left_kib_per_conn: [f64; 2],
    /// (MiB/s, proxy CPU s per GiB) for 1 and 8 streams.
    streams: [(f64, f64); 2],
    /// SNI passthrough: connections (full handshakes with the backend) per second, and
    /// the proxy's CPU µs per connection.
    sni_rate: f64,
    sni_cpu_us: f64,
    errors: u64,
}

/// Pushes 64 KiB writes into the sink over `streams` TLS connections for `window`.
async fn throughput(target: &Target, streams: usize, window: Duration) -> (u64, u64) {
    let until = Instant::now() + window;
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok((mut io, _)) = load::connect(&target).await else {
                    return (0u64, 1u64);
                };
                let chunk = vec![0x5au8; 64 * 1024];
                let mut sent = 0u64;
                while Instant::now() < until {
                    if io.write_all(&chunk).await.is_err() {
                        return (sent, 1);
                    }
                    sent += chunk.len() as u64;
                }
                (sent, 0)
            })
        })
        .collect();
    let mut total = (0, 0);
    for t in tasks {
        let (sent, errors) = t.await.unwrap_or((0, 1));
        total.0 += sent;
        total.1 += errors;
    }
    total
}

/// A TLS record carrying the first 2 KiB of a ClientHello that says it is 8 KiB long:
/// the proxy must buffer it and wait, as for a device on a slow link or an attacker.
fn truncated_hello() -> Vec<u8> {
    const PROMISED: usize = 8 * 1024;
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(PROMISED as u16).to_be_bytes());
    record.push(0x01); // handshake type: ClientHello
    record.extend_from_slice(&((PROMISED - 4) as u32).to_be_bytes()[1..]);
    record.extend_from_slice(&[0x03, 0x03]);
    record.resize(2048, 0x5a);
    record
}

/// Opens `n` connections to each of `ports` and sends each the truncated hello.
async fn half_open(ports: &[SocketAddr], n: usize) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let hello = truncated_hello();
    let mut held = Vec::with_capacity(n * ports.len());
    for addr in ports {
        for i in 0..n {
            let mut s = tokio::net::TcpStream::connect(addr)
                .await
                .with_context(|| format!("half-open connection {i} to {addr}"))?;
            s.write_all(&hello).await?;
            held.push(s);
        }
    }
    Ok(held)
}

async fn measure_proxy(
    proxy: &mut Proxy,
    responder: SocketAddr,
    pki: &pki::Pki,
    conns: usize,
    idle: usize,
    window: Duration,
) -> anyhow::Result<Figures> {
    let clk = sample::clock_ticks() as f64;
    let pid = proxy.server.pid;
    let full = Target::Tls(proxy.http, load::connector(pki, false)?);
    let resumed = Target::Tls(proxy.http, load::connector(pki, true)?);
    load::wait_answering(&full, REQUEST)
        .await
        .with_context(|| proxy.name)?;
    let mut f = Figures::default();

    let before = sample::rss_kib(pid)?;
    let held = load::hold(&full, REQUEST, idle).await?;
    tokio::time::sleep(SETTLE).await;
    f.rss_kib_per_conn = (sample::rss_kib(pid)? as f64 - before as f64) / idle as f64;
    // The proxy's sockets: client sides on its port, backend sides to the responder.
    let (_, skmem) = sample::skmem_bytes(proxy.http.port(), responder.port())?;
    f.skmem_kib_per_conn = skmem as f64 / 1024.0 / idle as f64;
    drop(held);
    tokio::time::sleep(SETTLE).await;

    // Twice: what the first flood leaves may be the allocator keeping freed pages for
    // reuse; if so the second flood reuses them and leaves no more.
    let before = sample::rss_kib(pid)?;
    for round in 0..2 {
        let flood = half_open(&[proxy.http, proxy.sni], idle).await?;
        tokio::time::sleep(SETTLE).await;
        let count = flood.len() as f64;
        let grown = (sample::rss_kib(pid)? as f64 - before as f64) / count;
        drop(flood);
        tokio::time::sleep(SETTLE).await;
        let left = (sample::rss_kib(pid)? as f64 - before as f64) / count;
        f.flood_kib_per_conn[round] = grown;
        f.flood_left_kib_per_conn[round] = left;
    }

    let timed = async |target: &Target| -> anyhow::Result<(Counted, f64, f64)> {
        let t0 = sample::cpu_ticks(pid)?;
        let started = Instant::now();
        let counted = load::per_connection(target, REQUEST, conns, window).await;
        let secs = started.elapsed().as_secs_f64();
        let cpu = (sample::cpu_ticks(pid)? - t0) as f64 / clk;
        Ok((counted, secs, cpu))
    };
    let (c, secs, cpu) = timed(&full).await?;
    f.full_rate = c.answers as f64 / secs;
    f.full_per_cpu_s = c.answers as f64 / cpu.max(1e-9);
    f.errors += c.errors;
    let (c, secs, cpu) = timed(&resumed).await?;
    f.resumed_rate = c.answers as f64 / secs;
    f.resumed_per_cpu_s = c.answers as f64 / cpu.max(1e-9);
    f.resumed_share = c.resumed as f64 / c.answers.max(1) as f64;
    f.errors += c.errors;

    let sink = Target::Tls(proxy.sink, load::connector(pki, false)?);
    for (i, streams) in [1usize, 8].into_iter().enumerate() {
        let t0 = sample::cpu_ticks(pid)?;
        let started = Instant::now();
        let (bytes, errors) = throughput(&sink, streams, window).await;
        let secs = started.elapsed().as_secs_f64();
        let cpu = (sample::cpu_ticks(pid)? - t0) as f64 / clk;
        let gib = bytes as f64 / (1u64 << 30) as f64;
        f.streams[i] = (bytes as f64 / secs / (1 << 20) as f64, cpu / gib.max(1e-9));
        f.errors += errors;
    }
    let sni = Target::Tls(proxy.sni, load::connector(pki, false)?);
    load::wait_answering(&sni, REQUEST)
        .await
        .with_context(|| format!("{}: SNI", proxy.name))?;
    let (c, secs, cpu) = timed(&sni).await?;
    f.sni_rate = c.answers as f64 / secs;
    f.sni_cpu_us = cpu * 1e6 / c.answers.max(1) as f64;
    f.errors += c.errors;
    proxy.server.check_alive()?;
    Ok(f)
}

fn ratio(ours: f64, theirs: Option<f64>) -> String {
    match theirs {
        Some(t) if t > 0.0 => format!("{:.2}×", ours / t),
        _ => "-".into(),
    }
}

async fn run() -> anyhow::Result<()> {
    let secs = knobs::num("SB_BENCH_SECS", 5, 1, 600);
    let conns = knobs::count("SB_BENCH_CONNS", 16, 1, 1024);
    let idle = knobs::count("SB_BENCH_IDLE_CONNS", 2000, 1, 50_000);
    let window = Duration::from_secs(secs);
    let sb_bin = knobs::switchboard_bin();
    let nginx_bin = support::nginx::find_tool("nginx");
    let haproxy_bin = support::nginx::find_tool("haproxy");
    println!(
        "edge bench: loopback only; {secs} s a phase, {conns} client loops, {idle} idle connections"
    );
    for (name, bin, args) in [
        ("nginx", &nginx_bin, &["-v"][..]),
        ("haproxy", &haproxy_bin, &["-v"][..]),
    ] {
        match bin {
            Some(b) => println!("  {name}: {}", support::nginx::version(b, args)),
            None => println!("  {name}: NOT FOUND: its column stays empty"),
        }
    }
    println!(
        "  {}",
        support::nginx::version(&PathBuf::from("openssl"), &["version"])
    );
    let pki = pki::make()?;
    let responder_l = TcpListener::bind("127.0.0.1:0").await?;
    let sink_l = TcpListener::bind("127.0.0.1:0").await?;
    let tls_l = TcpListener::bind("127.0.0.1:0").await?;
    let backends = [
        responder_l.local_addr()?,
        sink_l.local_addr()?,
        tls_l.local_addr()?,
    ];
    let files = switchboard::tls::TlsConfig {
        key_prefix: "bench.".into(),
        cert: pki.cert.clone(),
        key: pki.key.clone(),
        client_ca: None,
        client_auth: switchboard::tls::ClientAuth::None,
        register_requires_client_cert: false,
    };
    let backend_tls = switchboard::tls::ServerTls::load(&files, "bench-backend", Vec::new())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    tokio::spawn(responder(responder_l));
    tokio::spawn(sink(sink_l));
    tokio::spawn(tls_responder(tls_l, std::sync::Arc::new(backend_tls)));

    let mut results: Vec<(&'static str, Figures)> = Vec::new();
    type Starter = fn(&Path, &pki::Pki, [SocketAddr; 3]) -> anyhow::Result<Proxy>;
    let setups: [(Option<PathBuf>, Starter); 3] = [
        (Some(sb_bin.clone()), start_switchboard),
        (nginx_bin.clone(), start_nginx),
        (haproxy_bin.clone(), start_haproxy),
    ];
    // `SB_BENCH_SETUPS=switchboard` (a comma list) runs only those, for a profile.
    let only = knobs::list("SB_BENCH_SETUPS");
    for (i, (bin, start)) in setups.into_iter().enumerate() {
        let Some(bin) = bin else { continue };
        let name = ["switchboard", "nginx", "haproxy"][i];
        if only.as_ref().is_some_and(|l| !l.iter().any(|n| n == name)) {
            continue;
        }
        let mut proxy = start(&bin, &pki, backends)?;
        let figures = measure_proxy(&mut proxy, backends[0], &pki, conns, idle, window).await;
        let name = proxy.name;
        let log = proxy.server.log_text();
        proxy.server.stop(STOP_TIMEOUT);
        match figures {
            Ok(f) => results.push((name, f)),
            Err(err) if name != "switchboard" => {
                println!("  {name}: no figures: {err:#}; its log: {}", log.trim());
            }
            Err(err) => return Err(err.context(log)),
        }
    }
    let get = |name: &str| {
        results
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| f.clone())
    };
    let ours = get("switchboard").context("switchboard figures")?;
    let nginx = get("nginx");
    let haproxy = get("haproxy");
    println!();
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "", "switchboard", "nginx", "haproxy", "÷nginx", "÷haproxy"
    );
    let row = |label: &str, pick: &dyn Fn(&Figures) -> f64| {
        let n = nginx.as_ref().map(pick);
        let h = haproxy.as_ref().map(pick);
        let show = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        println!(
            "{label:<34} {:>12.1} {:>12} {:>12} {:>9} {:>9}",
            pick(&ours),
            show(n),
            show(h),
            ratio(pick(&ours), n),
            ratio(pick(&ours), h)
        );
    };
    row("RSS per idle TLS conn (KiB)", &|f| f.rss_kib_per_conn);
    row("  kernel skmem per conn (KiB)", &|f| f.skmem_kib_per_conn);
    row("half-open hello, RSS per conn (KiB)", &|f| {
        f.flood_kib_per_conn[0]
    });
    row("  left after they closed (KiB)", &|f| {
        f.flood_left_kib_per_conn[0]
    });
    row("  second flood, RSS per conn (KiB)", &|f| {
        f.flood_kib_per_conn[1]
    });
    row("  left after it closed (KiB)", &|f| {
        f.flood_left_kib_per_conn[1]
    });
    row("full handshakes /s", &|f| f.full_rate);
    row("full handshakes per CPU s", &|f| f.full_per_cpu_s);
    row("resumed handshakes /s", &|f| f.resumed_rate);
    row("resumed handshakes per CPU s", &|f| f.resumed_per_cpu_s);
    row("  share that resumed", &|f| f.resumed_share);
    row("TLS throughput, 1 stream (MiB/s)", &|f| f.streams[0].0);
    row("  proxy CPU s per GiB", &|f| f.streams[0].1);
    row("TLS throughput, 8 streams (MiB/s)", &|f| f.streams[1].0);
    row("  proxy CPU s per GiB", &|f| f.streams[1].1);
    row("SNI passthrough, conn/s", &|f| f.sni_rate);
    row("  proxy CPU µs per connection", &|f| f.sni_cpu_us);
    row("errors", &|f| f.errors as f64);
    println!();
    // Ours over nginx's, for each goal.
    let vs = |pick: fn(&Figures) -> f64| {
        nginx
            .as_ref()
            .map(pick)
            .filter(|n| *n > 0.0)
            .map(|n| pick(&ours) / n)
    };
    support::report::goal(
        "full handshakes per CPU s vs nginx",
        vs(|f| f.full_per_cpu_s),
        1.3,
        false,
    );
    support::report::goal(
        "resumed handshakes per CPU s vs nginx",
        vs(|f| f.resumed_per_cpu_s),
        1.5,
        false,
    );
    support::report::goal(
        "throughput, 1 stream vs nginx",
        vs(|f| f.streams[0].0),
        1.2,
        false,
    );
    support::report::goal(
        "throughput, 8 streams vs nginx",
        vs(|f| f.streams[1].0),
        1.2,
        false,
    );
    support::report::goal(
        "RSS per idle TLS connection vs nginx",
        vs(|f| f.rss_kib_per_conn),
        0.5,
        true,
    );
    Ok(())
}
