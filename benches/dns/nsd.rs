//! NSD (Debian's `nsd`), the authoritative server the DNS bench is compared with: run
//! in the foreground on a loopback port from a temporary directory, response rate
//! limiting off, one server process per core on `SO_REUSEPORT` sockets (as ours has
//! one socket and thread per core), serving a zone of the same shape as ours: the
//! SOA, one NS with glue, and `answers` A records at `<service>.<zone>`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::support::procs::{self, Server};

/// Whether nsd is installed.
pub fn available() -> bool {
    Command::new("nsd").arg("-v").output().is_ok()
}

/// Starts NSD for `zone` with `answers` A records at `service`, `servers` processes;
/// waits until it answers.
pub fn start(zone: &str, service: &str, answers: usize, servers: usize) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir()?;
    let port = procs::free_port()?;
    let path = dir.path().display().to_string();
    let mut zonefile = format!(
        "$ORIGIN {zone}\n$TTL 5\n@ IN SOA ns1.{zone} hostmaster.{zone} 1 3600 600 86400 5\n\
         @ IN NS ns1.{zone}\nns1 IN A 127.0.0.1\n"
    );
    for i in 0..answers {
        let _ = writeln!(zonefile, "{service} IN A 10.0.{}.{}", i / 250, i % 250 + 1);
    }
    std::fs::write(dir.path().join("zone"), zonefile)?;
    let conf = format!(
        "server:\n  ip-address: 127.0.0.1\n  port: {port}\n  server-count: {servers}\n  \
         reuseport: yes\n  username: \"\"\n  chroot: \"\"\n  zonesdir: \"{path}\"\n  \
         database: \"\"\n  zonelistfile: \"{path}/zone.list\"\n  xfrdfile: \"{path}/xfrd.state\"\n  \
         pidfile: \"{path}/nsd.pid\"\n  logfile: \"{path}/nsd.log\"\n  verbosity: 0\n  \
         minimal-responses: yes\n  rrl-ratelimit: 0\n  rrl-whitelist-ratelimit: 0\n\
         remote-control:\n  control-enable: no\nzone:\n  name: {zone}\n  zonefile: zone\n"
    );
    let conf_path = dir.path().join("nsd.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = Command::new("nsd");
    cmd.arg("-d").arg("-c").arg(&conf_path);
    let mut server = Server::spawn("nsd", cmd, dir, true)?;
    server.addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_answering(&mut server)?;
    Ok(server)
}

/// Polls NSD with one UDP query (the SOA) until it answers, for at most 10 s.
fn wait_answering(server: &mut Server) -> anyhow::Result<()> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    // id 0x1234, RD off, one question: the root name, type SOA, class IN. Any answer
    // (REFUSED included) says it listens.
    let query = [0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 512];
    for _ in 0..200 {
        server.check_alive().with_context(|| server.log_text())?;
        let _ = socket.send_to(&query, server.addr);
        if socket.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            break;
        }
    }
    bail!("nsd did not answer within 10 s: {}", server.log_text())
}
