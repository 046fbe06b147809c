//! Issue 10, part 1: no single point of failure for legacy devices. Two real
//! `switchboard serve` nodes in cluster mode (one PostgreSQL database, reached over its
//! Unix socket) sit behind one virtual IP that keepalived, with the files shipped in
//! `deploy/keepalived/`, moves to the live node.
//!
//! Everything runs in network namespaces this test creates and deletes (names carry the
//! PID): `br` holds a bridge; `n1`, `n2` (the nodes), `dev` (devices, Python asyncio,
//! `tests/failover/device.py`) and `svc` (two echo backends that register and
//! heartbeat, `tests/failover/backend.py`) each hang on it by a veth pair, in
//! 10.77.0.0/24. The host's namespace gets no address and no port. The test drives and
//! observes from outside: `ip`, `curl` run in `dev`, and the JSON lines the devices and
//! backends print.
//!
//! The forward listener binds `0.0.0.0:6665` on both nodes rather than the VIP with
//! `net.ipv4.ip_nonlocal_bind=1`: it then accepts on the VIP the moment the VIP
//! arrives, on the node's own address too (which (a) uses), and on 127.0.0.1 for the
//! health check, with no sysctl to forget.
//!
//! Skips (passes, with a message) only where network namespaces cannot be created or
//! keepalived is not installed (`.ci/run` installs it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::pg::TestDb;
use serde_json::Value;

const N1: &str = "10.77.0.11";
const N2: &str = "10.77.0.12";
const DEV: &str = "10.77.0.21";
const SVC: &str = "10.77.0.31";
const VIP: &str = "10.77.0.100";
/// Ports inside the test's own namespaces: nothing else can bind there.
const HTTP_PORT: u16 = 8080;
const FORWARD_PORT: u16 = 6665;
const DIRECT_DEVICES: usize = 8;
const VIP_DEVICES: usize = 6;

/// The deploy example's addresses, replaced when it is rendered for the test.
const EXAMPLE_SELF: &str = "192.0.2.11";
const EXAMPLE_PEER: &str = "192.0.2.12";
const EXAMPLE_VIP: &str = "192.0.2.100";
const EXAMPLE_SCRIPT: &str = "/usr/local/sbin/check_switchboard.sh";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// One line a device or backend printed, with when the test read it.
struct Event {
    at: Instant,
    ev: Value,
}

/// One instance in a node's admin listing.
#[derive(Debug, PartialEq)]
struct Listed {
    state: String,
    connections: u64,
    pending: u64,
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The namespaces, the processes started in them and their logs. Dropping it (on
/// success or panic) kills every process by PID, deletes the namespaces, then drops
/// the database.
struct Rig {
    tag: String,
    namespaces: Vec<String>,
    procs: Vec<Proc>,
    /// keepalived's VRRP child, known from its pid file.
    extra_pids: Vec<u32>,
    dir: tempfile::TempDir,
    tx: mpsc::Sender<Event>,
    rx: mpsc::Receiver<Event>,
    seen: Vec<Event>,
    db: Option<TestDb>,
}

fn run(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"))
}

fn ip(args: &[&str]) {
    let out = run("ip", args);
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Rig {
    /// Creates the namespaces and the bridge, or says why this machine cannot.
    fn create() -> Result<Rig, String> {
        let tag = format!("sbf{}", std::process::id());
        // Root-owned and not world-writable, as keepalived's enable_script_security
        // wants every directory above the check script to be.
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir_in("/run")
            .map_err(|e| format!("cannot create a directory in /run: {e}"))?;
        set_mode(dir.path(), 0o755);
        let (tx, rx) = mpsc::channel();
        let mut rig = Rig {
            tag,
            namespaces: Vec::new(),
            procs: Vec::new(),
            extra_pids: Vec::new(),
            dir,
            tx,
            rx,
            seen: Vec::new(),
            db: None,
        };
        for short in ["br", "n1", "n2", "dev", "svc"] {
            let ns = rig.ns(short);
            // A namespace of that name can only be left over from a killed run with
            // the same PID.
            let _ = run("ip", &["netns", "del", &ns]);
            let out = run("ip", &["netns", "add", &ns]);
            if !out.status.success() {
                return Err(format!(
                    "`ip netns add {ns}` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            rig.namespaces.push(ns);
        }
        let br = rig.ns("br");
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for (short, addr) in [("n1", N1), ("n2", N2), ("dev", DEV), ("svc", SVC)] {
            let ns = rig.ns(short);
            let port = format!("v{short}");
            ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ]);
            ip(&["-n", &br, "link", "set", &port, "master", "br0", "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        Ok(rig)
    }

    fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.tag)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// Starts `argv` in namespace `short`; its stderr (and stdout unless `events`)
    /// goes to `<name>.log`; with `events`, each stdout line is an [`Event`].
    fn spawn(&mut self, name: &str, short: &str, argv: &[&str], events: bool) -> u32 {
        let log = self.path(&format!("{name}.log"));
        let err = File::create(&log).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(short)])
            .args(argv)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stderr(err.try_clone().expect("log file"));
        if events {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(err);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        if let Some(out) = child.stdout.take() {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    let ev = serde_json::from_str(&line).unwrap_or(Value::String(line));
                    let at = Instant::now();
                    if tx.send(Event { at, ev }).is_err() {
                        break;
                    }
                }
            });
        }
        let pid = child.id();
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log,
        });
        pid
    }

    /// kill -9 of a process this rig started, by its PID.
    fn kill(&mut self, name: &str) {
        let proc = self
            .procs
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let _ = proc.child.kill();
        let _ = proc.child.wait();
    }

    /// Moves what the devices and backends printed into `seen`.
    fn drain_events(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
    }

    /// Polls `check` (events drained first) every 50 ms until it answers, for at most
    /// `limit`.
    fn eventually<T>(
        &mut self,
        what: &str,
        limit: Duration,
        mut check: impl FnMut(&mut Rig) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            self.drain_events();
            if let Some(v) = check(self) {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            // Woken early by an event, so device and backend lines are timed closely.
            if let Ok(e) = self.rx.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(e);
            }
        }
    }

    /// `curl` from the devices' namespace: the body, if it answered 200 in time.
    fn get(&self, addr: &str, path: &str) -> Option<Value> {
        let url = format!("http://{addr}:{HTTP_PORT}{path}");
        let ns = self.ns("dev");
        let out = run(
            "ip",
            &["netns", "exec", &ns, "curl", "-sf", "--max-time", "1", &url],
        );
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// The `default` service's instances as node `addr` lists them, by id.
    fn instances(&self, addr: &str) -> Option<BTreeMap<String, Listed>> {
        let body = self.get(addr, "/v1/services/default/instances")?;
        let mut out = BTreeMap::new();
        for i in body["instances"].as_array()? {
            let listed = Listed {
                state: i["state"].as_str()?.to_owned(),
                connections: i["connections"].as_u64()?,
                pending: i["pending"].as_u64()?,
            };
            out.insert(i["id"].as_str()?.to_owned(), listed);
        }
        Some(out)
    }

    /// Whether the VIP is on node `short`'s interface.
    fn holds_vip(&self, short: &str) -> bool {
        let out = run(
            "ip",
            &[
                "-n",
                &self.ns(short),
                "-o",
                "-4",
                "addr",
                "show",
                "dev",
                "eth0",
            ],
        );
        String::from_utf8_lossy(&out.stdout).contains(&format!(" {VIP}/"))
    }

    /// Events of kind `kind` printed so far.
    fn events(&self, kind: &str) -> Vec<&Event> {
        self.seen.iter().filter(|e| e.ev["ev"] == kind).collect()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for p in &mut self.procs {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        for pid in &self.extra_pids {
            let _ = run("kill", &["-9", &pid.to_string()]);
        }
        // Anything else still in our namespaces was started by us (keepalived's
        // script runs, a child we did not see): kill it by PID before deleting them.
        for ns in &self.namespaces {
            let out = run("ip", &["netns", "pids", ns]);
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = run("kill", &["-9", pid]);
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = run("ip", &["netns", "del", ns]);
        }
        if std::thread::panicking() {
            for p in &self.procs {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(25)..];
                eprintln!(
                    "--- {} (last {} lines)\n{}",
                    p.name,
                    tail.len(),
                    tail.join("\n")
                );
            }
            for e in &self.seen {
                eprintln!("event {}", e.ev);
            }
        }
        // The database goes last, once no node holds a connection to it.
        drop(self.db.take());
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// `deploy/keepalived/keepalived.conf` for one node of the test: the example's
/// addresses become the namespaces', the script path the rendered copy's, and node 2
/// gets priority 100, as the file's comments tell an operator to do.
fn render_keepalived(own: &str, peer: &str, node2: bool, script: &Path) -> String {
    let template = std::fs::read_to_string(repo("deploy/keepalived/keepalived.conf"))
        .expect("deploy/keepalived/keepalived.conf");
    let script = script.to_str().expect("utf-8 path");
    let mut out = template;
    let mut swaps = vec![
        (EXAMPLE_VIP, VIP),
        (EXAMPLE_SELF, own),
        (EXAMPLE_PEER, peer),
        (EXAMPLE_SCRIPT, script),
    ];
    if node2 {
        swaps.push(("priority 150", "priority 100"));
    }
    for (from, to) in swaps {
        assert!(
            out.contains(from),
            "deploy/keepalived/keepalived.conf no longer contains {from:?}; update the test"
        );
        out = out.replace(from, to);
    }
    assert!(
        !out.contains("192.0.2."),
        "an example address left unrendered"
    );
    out
}

fn keepalived_missing() -> Option<String> {
    match Command::new("keepalived").arg("--version").output() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "keepalived is not installed ({e}); `apt-get install keepalived` (.ci/run does)"
        )),
    }
}

#[test]
fn devices_on_the_virtual_ip_land_on_the_survivor_when_the_master_dies() {
    if let Some(why) = keepalived_missing() {
        eprintln!("SKIPPED failover test: {why}");
        return;
    }
    let mut rig = match Rig::create() {
        Ok(rig) => rig,
        Err(why) => {
            eprintln!("SKIPPED failover test: network namespaces unavailable: {why}");
            return;
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let db = rt.block_on(TestDb::create());
    // The namespaces cannot reach 127.0.0.1:5432, but the filesystem, and so the
    // server's Unix socket, is shared.
    let url = format!(
        "postgres://postgres@localhost/{}?host=/var/run/postgresql",
        db.name
    );
    rig.db = Some(db);

    // Two nodes, same database, same forward listener.
    let bin = env!("CARGO_BIN_EXE_switchboard");
    let http = format!("0.0.0.0:{HTTP_PORT}");
    let forward = format!("0.0.0.0:{FORWARD_PORT}=default");
    for short in ["n1", "n2"] {
        let argv = [
            bin,
            "serve",
            "--http",
            &http,
            "--insecure",
            "--forward",
            &forward,
            "--db",
            &url,
        ];
        rig.spawn(&format!("switchboard-{short}"), short, &argv, false);
    }
    for addr in [N1, N2] {
        rig.eventually("/readyz 200 on both nodes", Duration::from_secs(15), |r| {
            r.get(addr, "/readyz").map(|_| ())
        });
    }

    // Two backends, b1 registered through n1 and b2 through n2, each with the other
    // node as the next to heartbeat through: whichever node dies, one registration was
    // made through it.
    let backend = repo("tests/failover/backend.py");
    let backend = backend.to_str().expect("utf-8");
    for (name, port, first, next) in [("b1", "7001", N1, N2), ("b2", "7002", N2, N1)] {
        let advertise = format!("{SVC}:{port}");
        let registries = format!("{first}:{HTTP_PORT},{next}:{HTTP_PORT}");
        let argv = ["python3", backend, name, port, &advertise, &registries];
        rig.spawn(name, "svc", &argv, true);
    }
    let ids: BTreeMap<String, String> =
        rig.eventually("both backends registered", Duration::from_secs(10), |r| {
            let regs = r.events("registered");
            (regs.len() == 2).then(|| {
                regs.iter()
                    .map(|e| {
                        assert_eq!(e.ev["status"], 201, "{}", e.ev);
                        let backend = e.ev["backend"].as_str().expect("backend").to_owned();
                        (backend, e.ev["id"].as_str().expect("id").to_owned())
                    })
                    .collect()
            })
        });
    let id_set: BTreeSet<&String> = ids.values().collect();
    for addr in [N1, N2] {
        rig.eventually(
            "both backends up on both nodes",
            Duration::from_secs(5),
            |r| {
                let listed = r.instances(addr)?;
                let up: BTreeSet<&String> = listed
                    .iter()
                    .filter(|(_, l)| l.state == "up")
                    .map(|(id, _)| id)
                    .collect();
                (up == id_set).then_some(())
            },
        );
    }

    // (a) Devices entering alternately through n1's and n2's own addresses spread
    // evenly: each node ranks with what the other handed out (one fleet view). Each
    // device connects once both nodes list every connection made so far (through
    // either node) and no hand-out is pending. This runs before keepalived starts:
    // its check connects to each forward port every second, and the forwarder hands
    // each probe a backend (a pending hand-out) as it would a device.
    let device = repo("tests/failover/device.py");
    let device = device.to_str().expect("utf-8");
    let direct: Vec<String> = (0..DIRECT_DEVICES).map(|i| format!("direct-{i}")).collect();
    let mut landed: BTreeMap<String, u64> = ids.values().map(|id| (id.clone(), 0)).collect();
    for (i, name) in direct.iter().enumerate() {
        for addr in [N1, N2] {
            rig.eventually(
                &format!("{addr} to list {i} direct devices, none pending"),
                Duration::from_secs(10),
                |r| {
                    let listed = r.instances(addr)?;
                    listed
                        .iter()
                        .all(|(id, l)| l.pending == 0 && Some(&l.connections) == landed.get(id))
                        .then_some(())
                },
            );
        }
        let via = if i % 2 == 0 { N1 } else { N2 };
        let spec = format!("{name}={via}:{FORWARD_PORT}");
        rig.spawn(name, "dev", &["python3", device, &spec], true);
        let got = served_through(&mut rig, std::slice::from_ref(name), None, via);
        let backend = &got[name];
        *landed.get_mut(&ids[backend]).expect("a registered backend") += 1;
    }
    let mut counts: Vec<u64> = landed.values().copied().collect();
    counts.sort_unstable();
    eprintln!("failover: direct devices per backend (through n1 and n2 alternately): {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), DIRECT_DEVICES as u64);
    assert!(counts[1] - counts[0] <= 1, "unbalanced: {landed:?}");
    for addr in [N1, N2] {
        rig.eventually(
            &format!("{addr} to list every direct device"),
            Duration::from_secs(10),
            |r| {
                let listed = r.instances(addr)?;
                listed
                    .iter()
                    .all(|(id, l)| Some(&l.connections) == landed.get(id))
                    .then_some(())
            },
        );
    }
    for name in &direct {
        rig.kill(name);
    }
    for addr in [N1, N2] {
        rig.eventually("the direct devices gone", Duration::from_secs(10), |r| {
            let listed = r.instances(addr)?;
            listed.values().all(|l| l.connections == 0).then_some(())
        });
    }

    // keepalived on both, from the shipped files.
    let script = rig.path("check_switchboard.sh");
    std::fs::copy(repo("deploy/keepalived/check_switchboard.sh"), &script).expect("copy");
    set_mode(&script, 0o755);
    let mut vrrp_pid_files = BTreeMap::new();
    for (short, own, peer) in [("n1", N1, N2), ("n2", N2, N1)] {
        let conf = rig.path(&format!("keepalived-{short}.conf"));
        std::fs::write(&conf, render_keepalived(own, peer, short == "n2", &script))
            .expect("write keepalived.conf");
        let pid = rig.path(&format!("keepalived-{short}.pid"));
        let vrrp_pid = rig.path(&format!("keepalived-{short}-vrrp.pid"));
        let argv = [
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--vrrp",
            "--use-file",
            conf.to_str().expect("utf-8"),
            "--pid",
            pid.to_str().expect("utf-8"),
            "--vrrp_pid",
            vrrp_pid.to_str().expect("utf-8"),
        ];
        rig.spawn(&format!("keepalived-{short}"), short, &argv, false);
        vrrp_pid_files.insert(short, vrrp_pid);
    }
    // Exactly one holder, the same for 1.5 s (both start as BACKUP; the first to
    // time out takes the VIP and the other hears it).
    let mut candidate: Option<(&str, Instant)> = None;
    let (master, backup) =
        rig.eventually("one node to hold the VIP", Duration::from_secs(20), |r| {
            let holders: Vec<&str> = ["n1", "n2"]
                .into_iter()
                .filter(|n| r.holds_vip(n))
                .collect();
            match (holders.as_slice(), candidate) {
                ([one], Some((c, since))) if *one == c => {
                    (since.elapsed() >= Duration::from_millis(1500)).then(|| {
                        if c == "n1" {
                            ("n1", "n2")
                        } else {
                            ("n2", "n1")
                        }
                    })
                }
                ([one], _) => {
                    candidate = Some((one, Instant::now()));
                    None
                }
                _ => {
                    candidate = None;
                    None
                }
            }
        });
    let addr_of = |short: &str| if short == "n1" { N1 } else { N2 };
    let (master_addr, backup_addr) = (addr_of(master), addr_of(backup));
    eprintln!("failover: {master} ({master_addr}) holds the VIP {VIP}, {backup} is backup");
    let mut vrrp_pids = BTreeMap::new();
    for short in [master, backup] {
        let pid = rig.eventually("keepalived's VRRP pid file", Duration::from_secs(5), |_| {
            std::fs::read_to_string(&vrrp_pid_files[short])
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
        });
        rig.extra_pids.push(pid);
        vrrp_pids.insert(short, pid);
    }

    // (b) Devices on the VIP are served by the master.
    let vip_devices: Vec<String> = (0..VIP_DEVICES).map(|i| format!("vip-{i}")).collect();
    let specs: Vec<String> = vip_devices
        .iter()
        .map(|d| format!("{d}={VIP}:{FORWARD_PORT}"))
        .collect();
    let mut argv = vec!["python3", device];
    argv.extend(specs.iter().map(String::as_str));
    rig.spawn("vip-devices", "dev", &argv, true);
    let first = served_through(&mut rig, &vip_devices, None, master_addr);
    let mut spread: BTreeMap<&str, usize> = BTreeMap::new();
    for backend in first.values() {
        *spread.entry(backend.as_str()).or_default() += 1;
    }
    eprintln!("failover: VIP devices per backend through the master: {spread:?}");
    assert_eq!(
        spread.len(),
        2,
        "one backend got every VIP device: {spread:?}"
    );

    // (c) The master dies as a host does: its cable is pulled (nothing it sends gets
    // out any more), then its switchboard and keepalived are killed by PID.
    let t0 = Instant::now();
    ip(&[
        "-n",
        &rig.ns("br"),
        "link",
        "set",
        &format!("v{master}"),
        "down",
    ]);
    rig.kill(&format!("switchboard-{master}"));
    rig.kill(&format!("keepalived-{master}"));
    let _ = run("kill", &["-9", &vrrp_pids[master].to_string()]);
    let mut vip_moved = None;
    let (_, served_again) = served_through_timed(
        &mut rig,
        &vip_devices,
        t0,
        backup_addr,
        backup,
        &mut vip_moved,
    );
    let vip_moved = vip_moved.expect("the VIP moved before the devices were served");
    eprintln!(
        "failover: KILL-TO-SERVED {:.3} s: all {VIP_DEVICES} devices on {VIP} served by the \
         survivor {backup} again (VIP on {backup} after {:.3} s)",
        served_again.as_secs_f64(),
        vip_moved.as_secs_f64()
    );
    assert!(rig.events("gave_up").is_empty(), "a device gave up");

    // (d) No registration lost: the survivor lists both backends, up, with the ids
    // they got at registration (one through the dead node), and neither had to
    // register again. Their heartbeats reach it: once the connections the dead node
    // relayed time out at the backends, it lists exactly the devices it relays.
    let listed = rig.eventually(
        "the survivor to list both backends with its devices",
        Duration::from_secs(10),
        |r| {
            let listed = r.instances(backup_addr)?;
            let live: u64 = listed.values().map(|l| l.connections).sum();
            (listed.values().all(|l| l.state == "up") && live == VIP_DEVICES as u64)
                .then_some(listed)
        },
    );
    let listed_ids: BTreeSet<&String> = listed.keys().collect();
    assert_eq!(listed_ids, id_set, "the survivor's registrations differ");
    assert!(
        rig.events("reregistered").is_empty(),
        "a backend had to register again"
    );

    // The check ran under keepalived (enable_script_security, script_user nobody)...
    for short in ["n1", "n2"] {
        let log = std::fs::read_to_string(rig.path(&format!("keepalived-{short}.log")))
            .unwrap_or_default();
        assert!(
            log.contains("VRRP_Script(chk_switchboard) succeeded"),
            "keepalived on {short} never ran the check successfully"
        );
    }
    // ...and fails, within its timeouts, on each half it checks: a forward port that
    // refuses, an HTTP API that refuses, a dead host that answers nothing.
    let check = script.to_str().expect("utf-8");
    let local_http = format!("127.0.0.1:{HTTP_PORT}");
    let local_forward = format!("127.0.0.1:{FORWARD_PORT}");
    let dead_http = format!("{master_addr}:{HTTP_PORT}");
    for (http, forward, ok) in [
        (local_http.as_str(), local_forward.as_str(), true),
        (local_http.as_str(), "127.0.0.1:6666", false),
        ("127.0.0.1:8081", local_forward.as_str(), false),
        (dead_http.as_str(), local_forward.as_str(), false),
    ] {
        let started = Instant::now();
        let out = run(
            "ip",
            &["netns", "exec", &rig.ns(backup), check, http, forward],
        );
        assert_eq!(
            out.status.success(),
            ok,
            "check_switchboard.sh {http} {forward}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Within the vrrp_script's `timeout 4`, or keepalived counts a failure anyway.
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "check_switchboard.sh {http} {forward} took {:?}",
            started.elapsed()
        );
    }
}

/// Waits until every device in `devices` reported `served` on a connection attempt
/// made after `since` (any, with `None`) whose hello reached a backend relayed from
/// `relay`; answers device -> backend.
fn served_through(
    rig: &mut Rig,
    devices: &[String],
    since: Option<Instant>,
    relay: &str,
) -> BTreeMap<String, String> {
    rig.eventually("every device served", Duration::from_secs(10), |r| {
        served_map(r, devices, since, relay).map(|(m, _)| m)
    })
}

/// As [`served_through`] after `t0`, noting when the VIP reached `survivor`; answers
/// the map and how long after `t0` the last device was served.
fn served_through_timed(
    rig: &mut Rig,
    devices: &[String],
    t0: Instant,
    relay: &str,
    survivor: &str,
    vip_moved: &mut Option<Duration>,
) -> (BTreeMap<String, String>, Duration) {
    rig.eventually(
        "every VIP device served by the survivor",
        Duration::from_secs(25),
        |r| {
            if vip_moved.is_none() && r.holds_vip(survivor) {
                *vip_moved = Some(t0.elapsed());
            }
            served_map(r, devices, Some(t0), relay).map(|(m, last)| (m, last - t0))
        },
    )
}

/// For each device, its first `served` event (after `since`) whose hello a backend
/// saw from `relay`: device -> backend, and when the last of them was read.
fn served_map(
    rig: &Rig,
    devices: &[String],
    since: Option<Instant>,
    relay: &str,
) -> Option<(BTreeMap<String, String>, Instant)> {
    let mut out = BTreeMap::new();
    let mut last = None;
    for dev in devices {
        let served = rig
            .events("served")
            .into_iter()
            .find(|e| e.ev["dev"] == dev.as_str() && since.is_none_or(|t| e.at >= t))?;
        let text = format!("hello {dev}#{}", served.ev["conn"]);
        let hello = rig
            .events("hello")
            .into_iter()
            .find(|e| e.ev["text"] == text.as_str())?;
        assert_eq!(
            hello.ev["peer"], relay,
            "{dev} was relayed by {} instead of {relay}",
            hello.ev["peer"]
        );
        out.insert(
            dev.clone(),
            hello.ev["backend"].as_str().unwrap_or_default().to_owned(),
        );
        last = Some(last.map_or(served.at, |l: Instant| l.max(served.at)));
    }
    Some((out, last?))
}
