//! The Debian package (SPEC section 10) on this machine, as an operator meets it:
//! `dpkg -i` of the `.deb` that `cargo deb` built (`.ci/run` builds it first;
//! `SWITCHBOARD_DEB` names another), `systemd-analyze verify` of the unit, the unit's
//! `ExecStartPre` and `ExecStart` run as its user (`setpriv`) with the packaged config (readiness
//! read on a socket of the test's own as `NOTIFY_SOCKET`, since systemd is not PID 1
//! here), then `dpkg -r` and `dpkg -P`, checking what each leaves.
//!
//! Needs root, dpkg and systemd-analyze; without the `.deb` or those, fails where `CI`
//! is set and prints `SKIPPED` otherwise. It installs `/usr/bin/switchboard` for its
//! run and purges the package at its end (and at its start, if a run before it died).

// The skip-or-fail rule of every test file; this one uses a part of it.
#[allow(dead_code)]
#[path = "common/tools.rs"]
mod tools;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PATIENCE: Duration = Duration::from_secs(20);
const UNIT: &str = "/usr/lib/systemd/system/switchboard.service";
const CONFFILE: &str = "/etc/switchboard/switchboard.toml";
const STATE: &str = "/var/lib/switchboard";

/// The package to install: `SWITCHBOARD_DEB`, or the newest `target/debian/*.deb`.
fn package() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SWITCHBOARD_DEB") {
        return Some(PathBuf::from(path));
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("switchboard_") && n.ends_with(".deb"))
        })
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

fn run(program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("{program}: {err}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, text) = run(program, args);
    assert!(ok, "{program} {args:?} failed: {text}");
    text
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "switchboard"])
        .1
        .contains("install ok installed")
}

/// The values of `key=` lines of the unit's `[Service]` section, in order.
fn unit_lines(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
        .collect()
}

/// The next notify datagram that has `line`, skipping others (at most 1,000).
fn until(socket: &UnixDatagram, line: &str) -> String {
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..1_000 {
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|err| panic!("no {line} on NOTIFY_SOCKET: {err}"));
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message.lines().any(|l| l == line) {
            return message;
        }
    }
    panic!("no {line} in 1,000 datagrams");
}

/// One HTTP/1.1 request on a fresh connection: (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).expect("connect to the packaged server");
    conn.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        conn,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read the answer");
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// The packaged server, stopped by PID when dropped.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        // Only while it runs: a reaped PID may belong to someone else by now.
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_deb_installs_runs_as_its_user_and_removes_and_purges_cleanly() {
    let test = "the_deb_installs_runs_as_its_user_and_removes_and_purges_cleanly";
    let deb = package();
    let mut missing: Vec<String> = [
        "dpkg",
        "dpkg-query",
        "systemd-analyze",
        "setpriv",
        "readelf",
    ]
    .into_iter()
    .filter(|t| !tools::on_path(t))
    .map(str::to_owned)
    .collect();
    if deb.as_ref().is_none_or(|d| !d.is_file()) {
        missing.push("target/debian/switchboard_*.deb (cargo deb)".into());
    }
    if run("id", &["-u"]).1.trim() != "0" {
        missing.push("root".into());
    }
    if !tools::ready(test, &missing) {
        return;
    }
    let deb = deb.unwrap();
    if installed() {
        must("dpkg", &["--purge", "switchboard"]);
    }

    // Install.
    must("dpkg", &["-i", deb.to_str().unwrap()]);
    assert!(installed());
    let binary = Path::new("/usr/bin/switchboard");
    assert!(binary.is_file());
    let sections = must("readelf", &["-S", "-W", "/usr/bin/switchboard"]);
    assert!(
        !sections.contains(".debug_info") && !sections.contains(".debug_line"),
        "the packaged binary is stripped: {sections}"
    );
    let size = binary.metadata().unwrap().len();
    assert!(size < 40 << 20, "stripped binary is {size} bytes");
    let conffiles = must("dpkg-query", &["-W", "-f=${Conffiles}", "switchboard"]);
    assert!(conffiles.contains(CONFFILE), "conffiles: {conffiles}");

    // The unit: systemd's own checker, and what it must say.
    must("systemd-analyze", &["verify", UNIT]);
    let unit = std::fs::read_to_string(UNIT).expect("the unit file");
    for line in [
        "Type=notify",
        "User=switchboard",
        "StateDirectory=switchboard",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    assert!(unit_lines(&unit, "LimitNOFILE")[0].parse::<u64>().unwrap() >= 65_536);

    // The user, the state directory and the conffile's owner.
    let user = must("getent", &["passwd", "switchboard"]);
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    assert!(user.trim_end().ends_with(":/usr/sbin/nologin"), "{user}");
    let state = Path::new(STATE).metadata().expect("the state directory");
    assert_eq!(state.uid(), uid);
    let conf = Path::new(CONFFILE).metadata().unwrap();
    assert_eq!((conf.uid(), conf.permissions().mode() & 0o777), (0, 0o640));

    // ExecStartPre and ExecStart as the unit runs them, as its user, in its working
    // directory. Ports: `--http` and `--forward` (flags win over the file) move the
    // packaged 8080 and 6665 to free ones, so the test collides with nothing.
    let pre = &unit_lines(&unit, "ExecStartPre")[0];
    let start = &unit_lines(&unit, "ExecStart")[0];
    let words = |cmd: &str| {
        cmd.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let as_user = [
        "--reuid=switchboard",
        "--regid=switchboard",
        "--init-groups",
    ];
    let mut check = Command::new("setpriv");
    check.args(as_user).args(words(pre));
    let checked = check.current_dir(STATE).output().unwrap();
    assert!(checked.status.success(), "ExecStartPre: {checked:?}");

    let notify_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(notify_dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let notify_path = notify_dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o666)).unwrap();
    // setpriv execs the server: the child's PID is the server's, as systemd's would be.
    let mut serve = Command::new("setpriv");
    serve
        .args(as_user)
        .args(words(start))
        .args(["--http", "127.0.0.1:0", "--forward", "127.0.0.1:0=default"])
        .current_dir(STATE)
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = serve.spawn().expect("ExecStart");
    let stderr = child.stderr.take().unwrap();
    let serving = Serving(child);
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .take(10_000)
            .collect::<Vec<_>>()
    });
    let ready = until(&notify, "READY=1");
    let addr: SocketAddr = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS=serving on "))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {ready:?}"));
    let (status, body) = http(
        addr,
        "POST",
        "/v1/services/default/instances",
        r#"{"address": "127.0.0.1:6666"}"#,
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(addr, "GET", "/servers", "");
    assert_eq!(status, 200);
    assert!(body.contains("127.0.0.1:6666"), "{body}");
    let db = Path::new(STATE).join("switchboard.db");
    let db_meta = db
        .metadata()
        .expect("the SQLite file in the state directory");
    assert_eq!(db_meta.uid(), uid, "the SQLite file belongs to the user");
    must("kill", &["-TERM", &serving.0.id().to_string()]);
    until(&notify, "STOPPING=1");
    let deadline = Instant::now() + PATIENCE;
    let mut serving = serving;
    let code = loop {
        if let Some(status) = serving.0.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines = log.join().unwrap();
    assert_eq!(
        code,
        Some(0),
        "exit after SIGTERM; log:\n{}",
        lines.join("\n")
    );

    // Remove: the program and the unit go; the data, the conffile and the user stay.
    must("dpkg", &["-r", "switchboard"]);
    assert!(!binary.exists());
    assert!(!Path::new(UNIT).exists());
    assert!(db.is_file(), "remove keeps the registry's data");
    assert!(Path::new(CONFFILE).is_file(), "remove keeps the conffile");
    assert!(run("getent", &["passwd", "switchboard"]).0);

    // Purge: the data and the conffile go too.
    must("dpkg", &["-P", "switchboard"]);
    assert!(
        !Path::new(STATE).exists(),
        "purge deletes the state directory"
    );
    assert!(!Path::new(CONFFILE).exists(), "purge deletes the conffile");
    assert!(!Path::new("/etc/switchboard").exists());
    let overrides = run("dpkg-statoverride", &["--list", CONFFILE]);
    assert!(!overrides.0, "statoverride left: {}", overrides.1);
    assert!(!installed());
}

/// The field names of the config file's TOML types (`pub(super) name:` lines of
/// `src/config/file.rs`), `statics` spelled as its key `static`.
fn config_keys() -> Vec<String> {
    let source = include_str!("../src/config/file.rs");
    let mut keys: Vec<String> = source
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub(super) ")?.split_once(':'))
        .map(|(name, _)| name.trim())
        .filter(|name| !name.contains(' ') && !name.contains('('))
        .map(|name| if name == "statics" { "static" } else { name }.to_owned())
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn the_packaged_config_names_every_key_and_passes_check() {
    let text = include_str!("../deploy/debian/switchboard.toml");
    let keys = config_keys();
    assert!(keys.len() > 40, "parsed too few keys: {keys:?}");
    let written: Vec<String> = text
        .lines()
        .map(|l| l.trim_start_matches('#').trim())
        .map(|l| {
            let l = l.trim_start_matches("[[").trim_start_matches('[');
            let end = l.find([' ', '=', ']']).unwrap_or(l.len());
            l[..end].to_owned()
        })
        .collect();
    for key in &keys {
        assert!(
            written.iter().any(|w| w == key),
            "deploy/debian/switchboard.toml does not mention {key}"
        );
    }
    // As shipped (its one live key, db, points into the state directory).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("switchboard.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "check: {out:?}");
    // Every commented key line uncommented, one section at a time, is valid too:
    // the defaults written there are values the server accepts.
    // Keys that need files of their own (certificates), or exclude each other
    // (`tls_cert` and `sni_routes`), stay commented.
    let needs_files = [
        "[tls]",
        "register_requires",
        "tls_",
        "sni_routes",
        "cert ",
        "key ",
        "client_ca",
        "client_auth",
    ];
    let uncommented = text
        .lines()
        .map(|l| match l.strip_prefix('#') {
            Some(rest) if !rest.is_empty() && !rest.starts_with(' ') => {
                if needs_files.iter().any(|p| rest.starts_with(p)) {
                    l
                } else {
                    rest
                }
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, &uncommented).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check of every key uncommented: {out:?}\n{uncommented}"
    );
}
