//! What the binary tells systemd (`Type=notify`), read where systemd is not PID 1 by a
//! datagram socket listening as `NOTIFY_SOCKET`, as systemd's own socket would:
//! `READY=1` only once the API answers and the SQLite file is open, `WATCHDOG=1` pings
//! at half of `WATCHDOG_USEC`, `RELOADING=1` then `READY=1` around a `SIGHUP`, and
//! `STOPPING=1` on `SIGTERM`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::Options;
use common::process::Server;

/// The watchdog interval the test sets: pings are due every 150 ms.
const WATCHDOG_USEC: u64 = 300_000;

/// The next datagram, or a failure naming `what` after [`common::PATIENCE`].
fn next(socket: &UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 4096];
    socket
        .set_read_timeout(Some(common::PATIENCE))
        .expect("read timeout");
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|err| panic!("no datagram ({what}): {err}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Datagrams until one has `line` among its lines (skipping watchdog pings), at most
/// 1,000 of them.
fn until(socket: &UnixDatagram, line: &str) -> String {
    for _ in 0..1_000 {
        let message = next(socket, line);
        if message.lines().any(|l| l == line) {
            return message;
        }
    }
    panic!("no {line} in 1,000 datagrams");
}

#[test]
fn ready_watchdog_reload_and_stopping_reach_the_notify_socket() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    let db = dir.path().join("state").join("switchboard.db");
    std::fs::create_dir_all(db.parent().unwrap()).unwrap();
    let mut server = Server::start_with(Options {
        db: Some(format!("sqlite://{}", db.display())),
        env: vec![
            ("NOTIFY_SOCKET".into(), path.display().to_string()),
            ("WATCHDOG_USEC".into(), WATCHDOG_USEC.to_string()),
        ],
        ..Options::default()
    });

    // READY comes after the store and the listener: when it arrives, both are there.
    let ready = until(&socket, "READY=1");
    assert!(
        ready.contains(&format!("STATUS=serving on {}", server.http_addr)),
        "{ready}"
    );
    assert!(db.is_file(), "the SQLite file exists before READY");
    let health = std::net::TcpStream::connect(server.http_addr);
    assert!(health.is_ok(), "the API accepts once READY was sent");

    // Watchdog pings: several, none closer together than the half interval allows
    // by much (they come from the 250 ms sweep, pinging when 150 ms have passed).
    let mut pings = Vec::new();
    while pings.len() < 4 {
        if next(&socket, "WATCHDOG=1")
            .lines()
            .any(|l| l == "WATCHDOG=1")
        {
            pings.push(Instant::now());
        }
    }
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(100), "pings {gap:?} apart");
    }

    server.hup();
    until(&socket, "RELOADING=1");
    let again = until(&socket, "READY=1");
    assert!(again.contains("STATUS=serving on"), "{again}");
    server.wait_log("configuration reloaded");

    let pid = server.pid();
    std::thread::scope(|scope| {
        let stopping = scope.spawn(|| until(&socket, "STOPPING=1"));
        let code = server.terminate();
        assert_eq!(code, 0, "pid {pid} exits cleanly on SIGTERM");
        stopping.join().expect("STOPPING=1 read");
    });
}
