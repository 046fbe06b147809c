//! TLS benchmark (issue 23): what HTTPS costs the registry, against the same server on
//! plain HTTP and against nginx 1.22 (Debian, OpenSSL 3) serving HTTPS on the same
//! certificate, under the same client, in the same run, loopback only.
//!
//! ```text
//! cargo bench --bench tls
//! SB_BENCH_SECS=10 SB_BENCH_IDLE_CONNS=5000 cargo bench --bench tls
//! ```
//!
//! Setup: a private CA and an ECDSA P-256 server certificate made at run time
//! (`tls/pki.rs`); two release switchboard processes (`serve --no-forward --db
//! sqlite::memory:`), one plain and one with `[tls]`, each with the same 100
//! instances of service `bench` at uneven loads; nginx (`tls/nginx.rs`) answering
//! `return 200` with the body switchboard's `/servers?service=bench&limit=5` gives.
//! The client (`tls/load.rs`) is rustls on ring, the same for every server: TLS 1.3
//! (X25519, the server's AES-GCM pick), verifying the chain.
//!
//! Phases, each `SB_BENCH_SECS` long, server CPU from `/proc` (utime+stime of the
//! server's PID, every thread) over the answers the client counted:
//! 1. memory, first (on servers no load has run on: what a load freed, the allocator
//!    keeps, and held connections would reuse it): `SB_BENCH_IDLE_CONNS` connections
//!    opened, one request each, held idle for a second: RSS growth per connection
//!    (the kernel's socket buffers, the same for both, are not in RSS): switchboard
//!    plain, switchboard HTTPS, nginx HTTPS;
//! 2. kept-alive `GET /servers?service=bench&limit=5` on `SB_BENCH_CONNS` connections:
//!    switchboard plain, switchboard HTTPS, nginx HTTPS;
//! 3. a new connection per request, session resumption off: every handshake a full
//!    TLS 1.3 one: switchboard, nginx;
//! 4. the same with resumption on (one ticket store per server; the client counts the
//!    handshakes that resumed): switchboard, nginx.
//!
//! Goals, printed as met or MISSED beside their figures, never asserted: kept-alive
//! `/servers` over HTTPS ≤ 1.3 × plain's server CPU per request; full handshakes per
//! server CPU second ≥ 1.3 × nginx's; resumed ≥ 1.5 × nginx's; RSS per idle kept-alive
//! HTTPS connection ≤ 0.5 × nginx's.
//!
//! Knobs (environment): `SB_BENCH_BIN` (the switchboard binary, default this tree's
//! release build), `SB_BENCH_SECS` (5), `SB_BENCH_CONNS` (16), `SB_BENCH_IDLE_CONNS`
//! (2000), `SB_BENCH_CLIENT_THREADS` (1). Without nginx (`apt-get install -y
//! nginx-light`) its columns stay empty.

#[path = "tls/load.rs"]
mod load;
#[path = "tls/nginx.rs"]
mod nginx;
#[path = "tls/pki.rs"]
mod pki;
mod support;

use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use load::{Counted, Target};
use support::{http, knobs, procs, sample};

/// The service the fleet is registered in.
const SERVICE: &str = "bench";
/// Instances registered on each switchboard server.
const FLEET: usize = 100;
/// Longest wait for a server to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How long held connections sit idle before RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

fn main() {
    if !knobs::asked_for("tls") {
        return;
    }
    let threads = knobs::count("SB_BENCH_CLIENT_THREADS", 1, 1, 16);
    knobs::block_on("tls", threads, run());
}

/// One phase on one server.
#[derive(Debug, Clone, Copy)]
struct Measured {
    counted: Counted,
    ticks: u64,
    secs: f64,
    clk_tck: u64,
}

impl Measured {
    fn rate(&self) -> f64 {
        self.counted.answers as f64 / self.secs.max(1e-9)
    }

    fn cpu_us(&self) -> f64 {
        self.ticks as f64 * 1e6 / self.clk_tck as f64 / (self.counted.answers.max(1)) as f64
    }

    /// Answers (handshakes, in phases 2 and 3) per second of server CPU.
    fn per_cpu_sec(&self) -> f64 {
        self.counted.answers as f64 / (self.ticks as f64 / self.clk_tck as f64).max(1e-9)
    }
}

async fn measure<F: Future<Output = Counted>>(
    pid: u32,
    clk_tck: u64,
    load: F,
) -> anyhow::Result<Measured> {
    let before = sample::cpu_ticks(pid)?;
    let started = Instant::now();
    let counted = load.await;
    let secs = started.elapsed().as_secs_f64();
    let ticks = sample::cpu_ticks(pid)?.saturating_sub(before);
    Ok(Measured {
        counted,
        ticks,
        secs,
        clk_tck,
    })
}

fn print_phase(label: &str, m: &Measured) {
    println!(
        "  {label:<34} {:>9.0}/s  {:>7.1} µs CPU each  {:>8.0} per CPU s  errors {}{}",
        m.rate(),
        m.cpu_us(),
        m.per_cpu_sec(),
        m.counted.errors,
        if m.counted.resumed > 0 {
            format!("  resumed {}/{}", m.counted.resumed, m.counted.answers)
        } else {
            String::new()
        }
    );
}

/// A switchboard process: plain, or with `[tls]` on `pki`'s files.
fn start_switchboard(bin: &PathBuf, tls: Option<&pki::Pki>) -> anyhow::Result<procs::Server> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let mut args = vec![
        "--no-forward".to_owned(),
        "--db".to_owned(),
        "sqlite::memory:".to_owned(),
    ];
    if let Some(pki) = tls {
        let config = dir.path().join("switchboard.toml");
        let text = format!("[tls]\ncert = {:?}\nkey = {:?}\n", pki.cert, pki.key);
        std::fs::write(&config, text).context("config")?;
        args.extend(["--config".to_owned(), config.display().to_string()]);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (server, _) =
        procs::start_switchboard(Command::new(bin), dir, &refs, &[], http::START_TIMEOUT)?;
    Ok(server)
}

/// Registers the fleet and sets uneven loads by one heartbeat each.
async fn register_fleet(base: &str, client: &reqwest::Client) -> anyhow::Result<()> {
    for i in 0..FLEET {
        let url = format!("{base}/v1/services/{SERVICE}/instances");
        let body = json!({"address": http::instance_address(i)});
        let answer: Value = client
            .post(&url)
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = answer["id"].as_str().context("id")?;
        let lease = answer["lease"].as_str().context("lease")?;
        client
            .put(format!("{url}/{id}/heartbeat"))
            .header("X-Lease", lease)
            .json(&json!({"connections": (i * 37) % 997}))
            .send()
            .await?
            .error_for_status()?;
    }
    Ok(())
}

/// RSS growth per connection while `n` connections that asked once are held idle.
async fn idle_memory(pid: u32, target: &Target, request: &[u8], n: usize) -> anyhow::Result<f64> {
    let before = sample::rss_kib(pid)?;
    let held = load::hold(target, request, n).await?;
    tokio::time::sleep(SETTLE).await;
    let after = sample::rss_kib(pid)?;
    drop(held);
    tokio::time::sleep(SETTLE).await;
    Ok((after as f64 - before as f64) / n as f64)
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let clk_tck = sample::clock_ticks();
    let secs = knobs::num("SB_BENCH_SECS", 5, 1, 600);
    let conns = knobs::count("SB_BENCH_CONNS", 16, 1, 1024);
    let idle = knobs::count("SB_BENCH_IDLE_CONNS", 2000, 1, 50_000);
    let window = Duration::from_secs(secs);
    let sb_bin = knobs::switchboard_bin();
    let nginx_bin = support::nginx::find_tool("nginx");
    println!(
        "tls bench: loopback only (127.0.0.1); CLK_TCK {clk_tck}; {secs} s a phase, {conns} client loops, {idle} idle connections"
    );
    println!("  switchboard: {}", sb_bin.display());
    match &nginx_bin {
        Some(b) => println!(
            "  nginx:       {} ({}, {})",
            b.display(),
            support::nginx::version(b, &["-v"]),
            support::nginx::version(&PathBuf::from("openssl"), &["version"])
        ),
        None => println!(
            "  nginx:       NOT FOUND: its columns stay empty (apt-get install -y nginx-light)"
        ),
    }
    let pki = pki::make()?;
    let mut plain = start_switchboard(&sb_bin, None)?;
    let mut https = start_switchboard(&sb_bin, Some(&pki))?;
    let https_base = format!("https://localhost:{}", https.addr.port());
    let files = switchboard::tls::client::ClientFiles {
        ca_cert: Some(pki.ca.clone()),
        ..Default::default()
    };
    let client = switchboard::tls::client::reqwest_builder(&files)
        .map_err(anyhow::Error::msg)?
        .build()?;
    register_fleet(&format!("http://{}", plain.addr), &client).await?;
    register_fleet(&https_base, &client).await?;
    let path = format!("/servers?service={SERVICE}&limit=5");
    let body = client
        .get(format!("http://{}{path}", plain.addr))
        .send()
        .await?
        .text()
        .await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes();

    let mut nginx = match &nginx_bin {
        Some(bin) => Some(nginx::start(bin, &pki, &body)?),
        None => None,
    };
    let full = load::connector(&pki, false)?;
    let plain_t = Target::Plain(plain.addr);
    let https_t = Target::Tls(https.addr, full.clone());
    let nginx_t = nginx.as_ref().map(|n| Target::Tls(n.addr, full.clone()));
    load::wait_answering(&plain_t, &request).await?;
    load::wait_answering(&https_t, &request).await?;
    if let Some(t) = &nginx_t {
        load::wait_answering(t, &request).await?;
    }
    println!(
        "  fleet: {FLEET} instances on each switchboard; the /servers answer is {} bytes (nginx returns the same body)",
        body.len()
    );

    println!(
        "\n1. memory, first (before any load: what a load frees the allocator keeps, and held\n   connections would reuse it): {idle} connections, one request each, held idle {} s",
        SETTLE.as_secs()
    );
    let d_plain = idle_memory(plain.pid, &plain_t, &request, idle).await?;
    println!(
        "  {:<34} {d_plain:>7.2} KiB RSS per connection",
        "switchboard plain HTTP"
    );
    let d_https = idle_memory(https.pid, &https_t, &request, idle).await?;
    println!(
        "  {:<34} {d_https:>7.2} KiB RSS per connection",
        "switchboard HTTPS"
    );
    let d_nginx = match (&nginx, &nginx_t) {
        (Some(n), Some(t)) => {
            let v = idle_memory(n.pid, t, &request, idle).await?;
            println!("  {:<34} {v:>7.2} KiB RSS per connection", "nginx HTTPS");
            Some(v)
        }
        _ => None,
    };

    println!("\n2. kept-alive {path}");
    let a_plain = measure(
        plain.pid,
        clk_tck,
        load::kept_alive(&plain_t, &request, conns, window),
    )
    .await?;
    print_phase("switchboard plain HTTP", &a_plain);
    let a_https = measure(
        https.pid,
        clk_tck,
        load::kept_alive(&https_t, &request, conns, window),
    )
    .await?;
    print_phase("switchboard HTTPS", &a_https);
    let a_nginx = match (&nginx, &nginx_t) {
        (Some(n), Some(t)) => {
            Some(measure(n.pid, clk_tck, load::kept_alive(t, &request, conns, window)).await?)
        }
        _ => None,
    };
    if let Some(m) = &a_nginx {
        print_phase("nginx HTTPS", m);
    }

    println!("\n3. a new connection per request, full TLS 1.3 handshakes (no resumption)");
    let b_sb = measure(
        https.pid,
        clk_tck,
        load::per_connection(&https_t, &request, conns, window),
    )
    .await?;
    print_phase("switchboard HTTPS", &b_sb);
    let b_nginx = match (&nginx, &nginx_t) {
        (Some(n), Some(t)) => Some(
            measure(
                n.pid,
                clk_tck,
                load::per_connection(t, &request, conns, window),
            )
            .await?,
        ),
        _ => None,
    };
    if let Some(m) = &b_nginx {
        print_phase("nginx HTTPS", m);
    }

    println!("\n4. a new connection per request, resumed by session tickets");
    let resumed_sb = Target::Tls(https.addr, load::connector(&pki, true)?);
    let c_sb = measure(
        https.pid,
        clk_tck,
        load::per_connection(&resumed_sb, &request, conns, window),
    )
    .await?;
    print_phase("switchboard HTTPS", &c_sb);
    let c_nginx = match &nginx {
        Some(n) => {
            let t = Target::Tls(n.addr, load::connector(&pki, true)?);
            Some(
                measure(
                    n.pid,
                    clk_tck,
                    load::per_connection(&t, &request, conns, window),
                )
                .await?,
            )
        }
        None => None,
    };
    if let Some(m) = &c_nginx {
        print_phase("nginx HTTPS", m);
    }
    for (who, m) in [("switchboard", Some(&c_sb)), ("nginx", c_nginx.as_ref())] {
        if let Some(m) = m
            && m.counted.resumed * 10 < m.counted.answers * 9
        {
            println!(
                "  WARNING: {who} resumed only {} of {} handshakes",
                m.counted.resumed, m.counted.answers
            );
        }
    }

    for server in [&mut plain, &mut https] {
        server.check_alive()?;
    }
    let errors = [&a_plain, &a_https, &b_sb, &c_sb]
        .iter()
        .map(|m| m.counted.errors)
        .sum::<u64>();
    println!("\ngoals (reported, not asserted):");
    support::report::goal(
        "kept-alive /servers, HTTPS / plain server CPU per request",
        Some(a_https.cpu_us() / a_plain.cpu_us()),
        1.3,
        true,
    );
    support::report::goal(
        "full handshakes per CPU second, switchboard / nginx",
        b_nginx.map(|n| b_sb.per_cpu_sec() / n.per_cpu_sec()),
        1.3,
        false,
    );
    support::report::goal(
        "resumed handshakes per CPU second, switchboard / nginx",
        c_nginx.map(|n| c_sb.per_cpu_sec() / n.per_cpu_sec()),
        1.5,
        false,
    );
    support::report::goal(
        "RSS per idle HTTPS connection, switchboard / nginx",
        d_nginx.map(|n| d_https / n),
        0.5,
        true,
    );
    if let Some(m) = &a_nginx {
        println!(
            "  (kept-alive /servers over HTTPS, switchboard / nginx server CPU per request: {:.3}×)",
            a_https.cpu_us() / m.cpu_us()
        );
    }
    println!("  switchboard client-side errors in all phases: {errors}");
    println!("  machine load: {}", support::report::loadavg());
    println!("\nstopping: switchboard plain {}", plain.stop(STOP_TIMEOUT));
    println!("stopping: switchboard HTTPS {}", https.stop(STOP_TIMEOUT));
    if let Some(n) = nginx.as_mut() {
        println!("stopping: nginx {}", n.stop(STOP_TIMEOUT));
    }
    println!("run took {:.0} s", started.elapsed().as_secs_f64());
    if errors > 0 {
        bail!("{errors} requests failed on switchboard");
    }
    Ok(())
}
