//! Forwarder benchmark: Switchboard's fallback forwarder against nginx `stream` and
//! HAProxy `mode tcp`, with a direct connection (no proxy) as the reference; over TCP,
//! and over UDP against nginx's `listen ... udp`. One run, loopback (127.0.0.1) only.
//!
//! Run from the repository root:
//!
//! ```text
//! cargo bench --bench forwarder
//! ```
//!
//! Setups (each proxy with its own temp dir, config and free loopback ports, default
//! threading for the machine, stopped by its PID when its phase ends):
//!
//! - `direct`: the client talks to the backend itself;
//! - `nginx`: `stream { upstream { least_conn; } }`, `worker_processes auto`;
//! - `nginx hc+ka` (key `nginx-spec`): the same with `proxy_half_close on;
//!   proxy_socket_keepalive on;`, i.e. doing what SPEC section 4 asks of Switchboard
//!   (a FIN forwarded one way while the other still flows; keepalive on the backend
//!   socket, nginx's with the system's timers): the cost of those semantics, beside
//!   the cost of an implementation; TCP phases only (the directives are TCP's);
//! - `HAProxy`: `mode tcp`, `balance leastconn`, default `nbthread`, run with `-db`
//!   (one process); not in the UDP phase (HAProxy's community edition has no UDP);
//! - `Switchboard`: `switchboard serve --http 127.0.0.1:0 --db sqlite::memory:
//!   --forward 127.0.0.1:0=bench`, the backend registered with
//!   `POST /v1/services/bench/instances` (TTL 300 s, longer than any phase).
//!
//! For UDP (phase 4) the same setups get two UDP echo backends: nginx `upstream {
//! least_conn; }` of both, `listen 127.0.0.1:PORT udp reuseport` (nginx's docs: only
//! with `reuseport` do a client's datagrams stay in one session when there are several
//! workers), `proxy_timeout 20s`; Switchboard `--config` with one `[[forward]] protocol =
//! "udp"` (idle timeout: its UDP default, 20 s) and both backends as `[[static]]`
//! instances. Static instances are health-checked by TCP connect, so each UDP echo
//! backend also listens on TCP at the same port (accepting and closing); the phase
//! starts once Switchboard logged both up. `direct` spreads its clients over both.
//!
//! Every phase starts a fresh proxy process per setup, so one phase's allocations do
//! not flatter or burden the next.
//!
//! Measurements:
//!
//! 1. Bulk throughput: `iperf3 -s` behind the proxy, `iperf3 -c` through it, `-P 1` and
//!    `-P 8`, `SB_BENCH_SECS` seconds each; `end.sum_received.bits_per_second` of `-J`.
//!    iperf3 also opens a control connection through the proxy (it carries almost
//!    nothing). The proxy's CPU per GiB moved is shown too, and iperf3's (client and
//!    server), and how many CPUs the machine kept busy: at 2.00 on this 2-core machine
//!    the transfer was bound by the machine's CPU (iperf3's share included), not by a
//!    proxy that waits.
//! 2. Connection rate: `SB_BENCH_WORKERS` (16) concurrent workers for `SB_BENCH_SECS`
//!    seconds, each looping connect, write 16 bytes, read the 16-byte echo, close.
//!    One second of the same load first, unmeasured (warm-up). Proxy CPU per connection
//!    is utime+stime of all the proxy's processes (nginx master and workers) from
//!    `/proc/PID/stat`, after minus before, over the connections made. Twice:
//!    (2a) the client closes first, as specified; its ephemeral ports (and the
//!    proxy's, towards the backend) then sit in TIME_WAIT, and on loopback the kernel's
//!    free-port search in `connect()` (`__inet_check_established`,
//!    `__inet_hash_connect`) dominates the whole machine, for every setup alike;
//!    (2b) the backend closes first (a second echo listener that closes after 16
//!    bytes; the client waits for that FIN, then closes), so no ephemeral port lingers
//!    and the proxies' own costs show.
//! 3. Memory per idle connection: a few warm-up connections, then the proxy's RSS (sum
//!    of `VmRSS` of its processes) as the baseline; `SB_BENCH_CONNS` (5,000)
//!    connections are opened and held, each having echoed 16 bytes; RSS minus baseline
//!    over the connections held, in KiB. Then each held connection carries a 64 KiB
//!    burst (sent and read back), and RSS is measured again with all still held.
//!    Beside RSS, at the same three moments, the kernel's memory for the sockets:
//!    `skmem` of `ss -tmnO` (r + w + f: receive queue, send queue, forward-allocated
//!    bytes) summed over the proxy's own sockets, told apart by port (local port = the
//!    proxy's listener: its client sides; peer port = the echo backend: its backend
//!    sides); `/proc/net/sockstat` `TCP ... mem` (pages, every TCP socket on the
//!    machine) and the slab objects of every socket (`TCP`, `sock_inode_cache`,
//!    `filp` in `/proc/slabinfo`), which cannot tell the proxy's sockets from the
//!    client's and the backend's: for those two the proxies show their figure minus
//!    `direct`'s (measured the same way, client and backend sockets only).
//! 4. UDP request rate: `SB_BENCH_UDP_CLIENTS` (64) client sockets for
//!    `SB_BENCH_UDP_SECS` seconds, each in a closed loop: send a 64-byte datagram
//!    (with a sequence number), wait for its echo (given up after 200 ms: lost), send
//!    the next; one second of the same load first, from the same sockets, unmeasured.
//!    Requests/s, latency, proxy CPU per request as in 2. Twice: (4a) a session per
//!    client: each client keeps its address and the proxy its session (one backend
//!    socket) for the whole run (Switchboard without `udp_responses`, nginx without
//!    `proxy_responses`); (4b) a session per request: Switchboard `udp_responses = 1`,
//!    nginx `proxy_responses 1`, so the proxy ends the session at the reply and every
//!    request opens a new one (a backend pick and a new backend socket), as for DNS.
//!
//! The echo backends (both TCP listeners, both UDP ones) are tokio servers inside this
//! bench process, on the same tokio runtime (default threading) as the load-generating
//! clients. The bench process and
//! the proxies get `RLIMIT_NOFILE` raised through `sh -c 'ulimit -n ...; exec ...'`.
//! nginx, its stream module, HAProxy and iperf3 are installed with `apt-get` when
//! missing (`SB_BENCH_NO_INSTALL=1` to refuse).
//!
//! Knobs (environment): `SB_BENCH_SECS` (default 5), `SB_BENCH_CONNS` (default 5000),
//! `SB_BENCH_WORKERS` (default 16), `SB_BENCH_UDP_SECS` (default `SB_BENCH_SECS`),
//! `SB_BENCH_UDP_CLIENTS` (default 64), `SB_BENCH_ROUNDS` (rounds of the throughput,
//! rate and UDP tests, default 2, the order of setups reversed every other round; the
//! tables show the median and each round), `SB_BENCH_SETUPS` (comma list of
//! `direct,nginx,nginx-spec,haproxy,switchboard`), `SB_BENCH_BIN` (another switchboard
//! build to measure, e.g. an earlier commit's), `SB_BENCH_PHASES` (comma list of
//! `throughput,rate,memory,udp`; `rate-client` or `rate-backend` for one half of
//! `rate`, `udp-session` or `udp-request` for one half of `udp`),
//! `SB_BENCH_TCP_KEEPALIVE_SECS` (Switchboard's `tcp_keepalive_secs`; unset: its
//! default, 60).
//!
//! Nothing here asserts numbers: the goals are printed, met or missed.
//!
//! This file holds the knobs and the order of the run; `forwarder/environment.rs` the
//! descriptor limit, the tools and the header; `forwarder/proxy.rs` the setups and a
//! running proxy, whose configurations are `forwarder/nginx.rs`, `forwarder/haproxy.rs`
//! and `forwarder/switchboard.rs`; `forwarder/backends.rs` the echo backends; the
//! phases `forwarder/throughput.rs` (1), `forwarder/rate.rs` (2), `forwarder/memory.rs`
//! (3) and `forwarder/udp.rs` (4), with `forwarder/rounds.rs` (the rounds, medians) and
//! `forwarder/load.rs` (the closed-loop load phases 2 and 4 share); `forwarder/report.rs`
//! the tables and the goals.

#[path = "forwarder/backends.rs"]
mod backends;
#[path = "forwarder/environment.rs"]
mod environment;
#[path = "forwarder/haproxy.rs"]
mod haproxy;
#[path = "forwarder/load.rs"]
mod load;
#[path = "forwarder/memory.rs"]
mod memory;
#[path = "forwarder/nginx.rs"]
mod nginx;
#[path = "forwarder/proxy.rs"]
mod proxy;
#[path = "forwarder/rate.rs"]
mod rate;
#[path = "forwarder/report.rs"]
mod report;
#[path = "forwarder/rounds.rs"]
mod rounds;
mod support;
#[path = "forwarder/switchboard.rs"]
mod switchboard;
#[path = "forwarder/throughput.rs"]
mod throughput;
#[path = "forwarder/udp.rs"]
mod udp;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use backends::{MSG, UdpEcho, echo_server};
use proxy::{Sessions, Setup};
use rate::Closer;
use report::{REFERENCE, Summary};
use support::report::loadavg;
use support::{knobs, sample};
use throughput::IperfServer;

/// Longest wait for one client operation (connect plus echo, or a burst).
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a proxy to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a proxy to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Upper bound on connections per rate worker (the time bound ends it first).
const MAX_CONNS_PER_WORKER: u64 = 5_000_000;

fn main() {
    knobs::exit_on_error("forwarder", run());
}

/// The run's settings: the knobs, and what the machine gave (tick rate, limits, nginx's
/// stream module).
#[derive(Debug)]
pub struct Config {
    pub secs: u64,
    pub conns: usize,
    pub workers: usize,
    pub udp_secs: u64,
    pub udp_clients: usize,
    pub rounds: usize,
    pub setups: Vec<Setup>,
    pub phases: Vec<String>,
    pub switchboard: PathBuf,
    pub clk_tck: u64,
    /// `RLIMIT_NOFILE` the proxies run with (the wrapper raises the soft limit to this).
    pub nofile: u64,
    /// `load_module` path when nginx's stream module is dynamic.
    pub nginx_stream_module: Option<PathBuf>,
}

fn run() -> Result<()> {
    environment::raise_nofile()?;
    let secs = knobs::num("SB_BENCH_SECS", 5, 1, 60);
    let conns = knobs::count("SB_BENCH_CONNS", 5000, 1, 20_000);
    let workers = knobs::count("SB_BENCH_WORKERS", 16, 1, 256);
    let setups = match knobs::list("SB_BENCH_SETUPS") {
        None => Setup::ALL.to_vec(),
        Some(keys) => Setup::ALL
            .into_iter()
            .filter(|s| keys.iter().any(|k| k == s.key()))
            .collect(),
    };
    let phases = knobs::list("SB_BENCH_PHASES").unwrap_or_else(|| {
        ["throughput", "rate", "memory", "udp"]
            .map(str::to_owned)
            .to_vec()
    });
    environment::ensure_tools(&setups)?;
    let clk_tck = sample::clock_ticks();
    let cfg = Config {
        secs,
        conns,
        workers,
        udp_secs: knobs::num("SB_BENCH_UDP_SECS", secs, 1, 60),
        udp_clients: knobs::count("SB_BENCH_UDP_CLIENTS", 64, 1, 4096),
        rounds: knobs::count("SB_BENCH_ROUNDS", 2, 1, 9),
        setups,
        phases,
        switchboard: knobs::switchboard_bin(),
        clk_tck,
        nofile: environment::NOFILE
            .min(environment::nofile_hard_limit().unwrap_or(environment::NOFILE)),
        nginx_stream_module: environment::nginx_stream_module()?,
    };
    environment::print_environment(&cfg);
    let started = Instant::now();
    let mut max_rustc = environment::count_rustc();

    let runtime = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let (echo_addr, echo_close_addr, udp) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(echo_server(listener, None));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let close_addr = listener.local_addr()?;
        tokio::spawn(echo_server(listener, Some(MSG.len())));
        let udp = [UdpEcho::start().await?, UdpEcho::start().await?];
        anyhow::Ok((addr, close_addr, udp))
    })?;
    println!(
        "echo backends: tokio servers in the bench process (same runtime as the clients): \
         {echo_addr} (echoes until the client closes), {echo_close_addr} (closes after 16 B); \
         UDP {} and {} (each also accepts and closes TCP on its port, for Switchboard's \
         static health check)",
        udp[0].addr, udp[1].addr
    );
    let mut summary = Summary::default();

    if cfg.phases.iter().any(|p| p == "throughput") {
        let iperf = IperfServer::start()?;
        println!(
            "iperf3 server: 127.0.0.1:{} (pid {})",
            iperf.port, iperf.server.pid
        );
        let table =
            throughput::phase_throughput(&cfg, iperf.addr(), iperf.server.pid, &mut summary);
        println!("{table}");
        drop(iperf);
        max_rustc = max_rustc.max(environment::count_rustc());
    }
    if cfg.phases.iter().any(|p| p == "rate" || p == "rate-client") {
        let table = rate::phase_rate(&cfg, &runtime, echo_addr, Closer::Client, &mut summary);
        println!("{table}");
        max_rustc = max_rustc.max(environment::count_rustc());
    }
    if cfg
        .phases
        .iter()
        .any(|p| p == "rate" || p == "rate-backend")
    {
        let table = rate::phase_rate(
            &cfg,
            &runtime,
            echo_close_addr,
            Closer::Backend,
            &mut summary,
        );
        println!("{table}");
        max_rustc = max_rustc.max(environment::count_rustc());
    }
    if cfg.phases.iter().any(|p| p == "memory") {
        let table = memory::phase_memory(&cfg, &runtime, echo_addr, &mut summary);
        println!("{table}");
        max_rustc = max_rustc.max(environment::count_rustc());
    }
    for (sessions, half) in [
        (Sessions::PerClient, "udp-session"),
        (Sessions::PerRequest, "udp-request"),
    ] {
        if cfg.phases.iter().any(|p| p == "udp" || p == half) {
            let table = udp::phase_udp(&cfg, &runtime, &udp, sessions, &mut summary);
            println!("{table}");
            max_rustc = max_rustc.max(environment::count_rustc());
        }
    }
    runtime.shutdown_timeout(Duration::from_secs(2));

    println!("{}", summary.goals());
    println!("{REFERENCE}");
    println!(
        "run took {:.0} s; loadavg at the end {}; rustc processes seen at phase boundaries: \
         max {max_rustc}{}",
        started.elapsed().as_secs_f64(),
        loadavg(),
        if max_rustc > 0 {
            " (other compiles competed for the 2 cores: numbers are noisier)"
        } else {
            ""
        }
    );
    println!("command: cargo bench --bench forwarder");
    Ok(())
}
