//! Load-aware DNS (SPEC 8) end to end: the real server on port 0, asked by real
//! clients (`dig` from Debian's dnsutils, hickory's resolver) and by raw datagrams
//! for what clients hide (the TC bit, sizes, malformed packets); two cluster nodes on
//! PostgreSQL answer the same.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::pg::TestDb;
use common::{Options, PATIENCE, Server, as_time_passes, eventually};
use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const ZONE: &str = "sb.test.";

fn dns_options(extra: &str) -> Options {
    Options {
        config: Some(format!(
            "[dns]\nlisten = \"127.0.0.1:0\"\ndomain = \"sb.test\"\n{extra}"
        )),
        ..Options::default()
    }
}

async fn dns_server(extra: &str) -> (Server, SocketAddr) {
    let s = Server::start_with(dns_options(extra)).await;
    let addr = s.dns_addr.expect("[dns] configured");
    (s, addr)
}

/// `dig @addr -p port args...`, its standard output. Run as a child process without
/// blocking the runtime the in-process server runs on.
async fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .arg("-p")
        .arg(addr.port().to_string())
        .args(["+time=2", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("dig (Debian's dnsutils; .ci/run installs it)");
    assert!(out.status.success(), "dig {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn query(name: &str, kind: RecordType) -> Message {
    let mut q = Message::query();
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    q
}

/// Sends raw `bytes` over UDP and waits up to `wait` for an answer.
async fn udp_raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, addr).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
        Ok(Ok((n, _))) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

async fn udp(addr: SocketAddr, q: &Message) -> (Message, usize) {
    let bytes = udp_raw(addr, &q.to_vec().unwrap(), PATIENCE)
        .await
        .expect("a UDP answer");
    (Message::from_vec(&bytes).unwrap(), bytes.len())
}

async fn tcp(addr: SocketAddr, q: &Message) -> Message {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let wire = q.to_vec().unwrap();
    let mut framed = (wire.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&wire);
    stream.write_all(&framed).await.unwrap();
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut body).await.unwrap();
    Message::from_vec(&body).unwrap()
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers.iter().map(|r| r.data.to_string()).collect()
}

#[tokio::test]
async fn a_burst_of_four_dig_lookups_puts_each_of_two_instances_first_twice() {
    let (s, addr) = dns_server("").await;
    s.register_addr("mqtt", "10.0.0.1:1883").await;
    s.register_addr("mqtt", "10.0.0.2:1883").await;
    let mut firsts = Vec::new();
    for _ in 0..4 {
        let out = dig(addr, &["+short", "mqtt.sb.test", "A"]).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "both instances listed: {out}");
        firsts.push(lines[0].to_owned());
    }
    firsts.sort();
    assert_eq!(firsts, ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"]);
    // The pending hand-outs are the registry's own: /servers sees them too.
    let (status, body) = s.get("/servers?service=mqtt").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_answer_is_authoritative_with_the_configured_ttl() {
    let (s, addr) = dns_server("ttl_secs = 7").await;
    s.register_addr("mqtt", "10.0.0.1:1883").await;
    let out = dig(
        addr,
        &["+noall", "+answer", "+comments", "mqtt.sb.test", "A"],
    )
    .await;
    assert!(out.contains("flags: qr aa"), "authoritative: {out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("mqtt.sb.test.") && l.contains("\t7\tIN\tA\t10.0.0.1")),
        "{out}"
    );
}

#[tokio::test]
async fn srv_gives_each_instance_its_port_with_a_target_that_resolves() {
    let (s, addr) = dns_server("").await;
    s.register_addr("mqtt", "10.0.0.1:1883").await;
    s.register_addr("mqtt", "10.0.0.2:8883").await;
    let out = dig(addr, &["+short", "_mqtt._tcp.sb.test", "SRV"]).await;
    let mut records: Vec<(String, String)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2].to_owned(), f[3].to_owned())
        })
        .collect();
    records.sort();
    assert_eq!(
        records,
        [
            ("1883".to_owned(), "0a000001.addr.sb.test.".to_owned()),
            ("8883".to_owned(), "0a000002.addr.sb.test.".to_owned()),
        ],
        "{out}"
    );
    let glue = dig(addr, &["+short", "0a000002.addr.sb.test", "A"]).await;
    assert_eq!(glue.trim(), "10.0.0.2");
    // Priorities follow the rank: 0 for the first, 1 for the second.
    let prios: Vec<&str> = out
        .lines()
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(prios, ["0", "1"], "{out}");
}

#[tokio::test]
async fn an_unknown_service_is_nxdomain_and_the_apex_has_soa_and_ns() {
    let (s, addr) = dns_server("name_servers = [\"127.0.0.1\"]").await;
    s.register_addr("mqtt", "10.0.0.1:1883").await;
    let nx = dig(addr, &["nope.sb.test", "A"]).await;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(
        nx.contains("IN\tSOA\tns1.sb.test. hostmaster.sb.test."),
        "{nx}"
    );
    // A known service without a record of the type: NOERROR, no answer.
    let nodata = dig(addr, &["mqtt.sb.test", "AAAA"]).await;
    assert!(nodata.contains("status: NOERROR"), "{nodata}");
    assert!(nodata.contains("ANSWER: 0"), "{nodata}");
    let soa = dig(addr, &["+short", "sb.test", "SOA"]).await;
    assert!(
        soa.starts_with("ns1.sb.test. hostmaster.sb.test. 1 "),
        "{soa}"
    );
    let ns = dig(addr, &["sb.test", "NS"]).await;
    assert!(ns.contains("IN\tNS\tns1.sb.test."), "{ns}");
    assert!(
        ns.contains("ns1.sb.test.\t\t5\tIN\tA\t127.0.0.1"),
        "glue: {ns}"
    );
    // Outside the zone: refused.
    let other = dig(addr, &["example.com", "A"]).await;
    assert!(other.contains("status: REFUSED"), "{other}");
}

#[tokio::test]
async fn a_drained_or_expired_instance_leaves_the_answers() {
    let (s, addr) = dns_server("").await;
    let keep = s
        .register("mqtt", json!({"address": "10.0.0.1:1883", "ttl_secs": 30}))
        .await;
    let drained = s.register_addr("mqtt", "10.0.0.2:1883").await;
    let expiring = s
        .register("mqtt", json!({"address": "10.0.0.3:1883", "ttl_secs": 1}))
        .await;
    let q = query("mqtt.sb.test.", RecordType::A);
    let (m, _) = udp(addr, &q).await;
    let all: BTreeSet<String> = addresses(&m).into_iter().collect();
    assert_eq!(all.len(), 3, "{all:?}");
    let resp = s
        .client
        .post(s.url(&format!("/v1/services/mqtt/instances/{}/drain", drained.id)))
        .header("X-Lease", &drained.lease)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (m, _) = udp(addr, &q).await;
    assert!(!addresses(&m).contains(&"10.0.0.2".to_owned()), "{m:?}");
    as_time_passes(
        "the ttl_secs = 1 instance to expire",
        Duration::from_millis(250),
        || async {
            let (m, _) = udp(addr, &q).await;
            (addresses(&m) == ["10.0.0.1"]).then_some(())
        },
    )
    .await;
    drop((keep, expiring));
}

#[tokio::test]
async fn an_answer_over_512_bytes_sets_tc_and_dig_gets_it_whole_over_tcp() {
    let (s, addr) = dns_server("answers = 20").await;
    for i in 1..=20 {
        s.register_addr("big", &format!("[2001:db8::{i:x}]:1883"))
            .await;
    }
    let q = query("big.sb.test.", RecordType::AAAA);
    let (cut, len) = udp(addr, &q).await;
    assert!(len <= 512, "{len} bytes over UDP without EDNS");
    assert!(cut.metadata.truncation, "TC set");
    assert!(cut.answers.len() < 20, "{}", cut.answers.len());
    // With EDNS the client's larger buffer is used (up to 1232 bytes).
    let mut big = q.clone();
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    big.set_edns(edns);
    let (whole, len) = udp(addr, &big).await;
    assert!(
        !whole.metadata.truncation && whole.answers.len() == 20,
        "{len} bytes"
    );
    let over_tcp = tcp(addr, &q).await;
    assert_eq!(over_tcp.answers.len(), 20);
    // dig without EDNS sees TC and retries over TCP by itself.
    let out = dig(addr, &["+noedns", "big.sb.test", "AAAA"]).await;
    assert!(out.contains("ANSWER: 20"), "{out}");
}

#[tokio::test]
async fn hickorys_resolver_resolves_over_udp_and_over_tcp() {
    use hickory_resolver::Resolver;
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;

    let (s, addr) = dns_server("").await;
    s.register_addr("mqtt", "10.0.0.1:1883").await;
    for udp in [true, false] {
        let mut conn = if udp {
            ConnectionConfig::udp()
        } else {
            ConnectionConfig::tcp()
        };
        conn.port = addr.port();
        let ns = NameServerConfig::new(addr.ip(), true, vec![conn]);
        let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
        let mut builder = Resolver::builder_with_config(config, TokioRuntimeProvider::default());
        builder.options_mut().cache_size = 0;
        let resolver = builder.build().unwrap();
        let found = resolver
            .lookup_ip("mqtt.sb.test.")
            .await
            .unwrap_or_else(|e| panic!("udp={udp}: {e}"));
        let ips: Vec<String> = found.iter().map(|ip| ip.to_string()).collect();
        assert_eq!(ips, ["10.0.0.1"], "udp={udp}");
        let nx = resolver.lookup_ip("nope.sb.test.").await.unwrap_err();
        assert!(nx.is_nx_domain(), "udp={udp}: {nx}");
    }
}

#[tokio::test]
async fn bad_queries_get_an_error_or_nothing_and_the_server_answers_on() {
    let (s, addr) = dns_server("").await;
    s.register_addr("mqtt", "10.0.0.1:1883").await;
    let short = Duration::from_millis(300);
    // Fewer bytes than a header: nothing to answer to.
    assert_eq!(udp_raw(addr, &[1, 2, 3], short).await, None);
    // A header and garbage: FORMERR with the query's id.
    let mut junk = vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    junk.extend_from_slice(&[0xc0, 0xff, 0xee]);
    let m = Message::from_vec(&udp_raw(addr, &junk, PATIENCE).await.unwrap()).unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (0x1234, ResponseCode::FormErr)
    );
    // A name longer than 255 bytes (five 63-byte labels).
    let mut huge = vec![0x56, 0x78, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    for _ in 0..5 {
        huge.push(63);
        huge.extend_from_slice(&[b'a'; 63]);
    }
    huge.extend_from_slice(&[0, 0, 1, 0, 1]);
    let m = Message::from_vec(&udp_raw(addr, &huge, PATIENCE).await.unwrap()).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // An unknown type at a known name: NODATA.
    let (m, _) = udp(addr, &query("mqtt.sb.test.", RecordType::Unknown(65_280))).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    // Two questions: FORMERR.
    let mut two = query("mqtt.sb.test.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("x.sb.test.").unwrap(),
        RecordType::A,
    ));
    assert_eq!(
        udp(addr, &two).await.0.metadata.response_code,
        ResponseCode::FormErr
    );
    // A flood from one socket, answered or not, then a normal query is answered.
    let flood = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let wire = query("mqtt.sb.test.", RecordType::A).to_vec().unwrap();
    for i in 0..5_000u32 {
        let packet = if i % 2 == 0 { &wire[..] } else { &junk[..] };
        let _ = flood.send_to(packet, addr).await;
    }
    let (m, _) = udp(addr, &query("mqtt.sb.test.", RecordType::A)).await;
    assert_eq!(addresses(&m), ["10.0.0.1"]);
    // TCP garbage: a length and too few bytes, then a close; the server goes on.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[0x00, 0x40, 1, 2, 3]).await.unwrap();
    drop(stream);
    assert_eq!(
        addresses(&tcp(addr, &query("mqtt.sb.test.", RecordType::A)).await),
        ["10.0.0.1"]
    );
}

#[tokio::test]
async fn two_cluster_nodes_answer_the_same() {
    use common::process::Server as Node;
    let db = TestDb::create().await;
    let start = || {
        let mut options = Options::db_url(&db.url());
        options.config = Some(
            "[dns]\ndomain = \"sb.test\"\nname_servers = [\"127.0.0.1\", \"127.0.0.2\"]\n".into(),
        );
        options.extra = vec!["--dns".into(), "127.0.0.1:0".into()];
        let mut node = Node::start_with(options);
        let line = node.wait_log_nth("dns listening on ", 0);
        let addr: SocketAddr = line
            .split("dns listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unparsable dns line {line:?}"));
        (node, addr)
    };
    let (a, a_dns) = start();
    let (b, b_dns) = start();
    a.register_addr("mqtt", "10.0.0.1:1883").await;
    b.register_addr("mqtt", "10.0.0.2:1883").await;
    let q = query("mqtt.sb.test.", RecordType::A);
    for dns in [a_dns, b_dns] {
        eventually("both instances in this node's answers", || async {
            let (m, _) = udp(dns, &q).await;
            (m.answers.len() == 2).then_some(())
        })
        .await;
    }
    let set = |m: &Message| addresses(m).into_iter().collect::<BTreeSet<_>>();
    assert_eq!(set(&udp(a_dns, &q).await.0), set(&udp(b_dns, &q).await.0));
    for kind in [RecordType::SOA, RecordType::NS] {
        let (x, y) = (
            udp(a_dns, &query(ZONE, kind)).await.0,
            udp(b_dns, &query(ZONE, kind)).await.0,
        );
        assert_eq!(x.answers, y.answers, "{kind}");
        assert_eq!(x.additionals, y.additionals, "{kind}");
    }
    let ns = udp(a_dns, &query(ZONE, RecordType::NS)).await.0;
    let names: Vec<String> = ns
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::NS(n) => n.0.to_ascii(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["ns1.sb.test.", "ns2.sb.test."]);
    let nx = udp(b_dns, &query("nope.sb.test.", RecordType::A)).await.0;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
}

#[tokio::test]
async fn a_source_over_queries_per_sec_gets_tc_and_dig_is_answered_over_tcp() {
    let (s, addr) = dns_server("queries_per_sec = 5").await;
    s.register_addr("mqtt", "10.0.0.1:1883").await;
    let q = query("mqtt.sb.test.", RecordType::A);
    let (mut full, mut cut) = (0, 0);
    for _ in 0..20 {
        let (m, len) = udp(addr, &q).await;
        if m.metadata.truncation {
            assert!(m.answers.is_empty() && len <= q.to_vec().unwrap().len());
            cut += 1;
        } else {
            assert_eq!(addresses(&m), ["10.0.0.1"]);
            full += 1;
        }
    }
    assert!(
        (5..=7).contains(&full),
        "{full} full answers, {cut} truncated"
    );
    // Counted as such (only this test limits, in this process's shared metrics).
    let metrics = s.metrics_text().await;
    let limited = metrics
        .lines()
        .find(|l| {
            l.starts_with("switchboard_dns_queries_total{")
                && l.contains("rcode=\"rate_limited\"")
                && l.contains("transport=\"udp\"")
        })
        .unwrap_or_else(|| panic!("no rate_limited series in:\n{metrics}"));
    let counted: u64 = limited.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(counted, cut, "{limited}");
    // A real client over the limit is told TC and gets its answer over TCP. The
    // bucket refills at 5 a second while the metrics were read: empty it again
    // first, and try again (a few times) when dig still found a token left.
    let mut out = String::new();
    for _ in 0..5 {
        for _ in 0..20 {
            if udp(addr, &q).await.0.metadata.truncation {
                break;
            }
        }
        out = dig(addr, &["mqtt.sb.test", "A"]).await;
        if out.contains("Truncated, retrying in TCP mode") {
            break;
        }
    }
    assert!(out.contains("Truncated, retrying in TCP mode"), "{out}");
    assert!(out.contains("IN\tA\t10.0.0.1"), "{out}");
    // TCP is not limited: a connection is its own proof of the source address.
    for _ in 0..10 {
        assert_eq!(addresses(&tcp(addr, &q).await), ["10.0.0.1"]);
    }
}

/// The value of one `switchboard_dns_dropped_total` series (0 when absent).
fn dropped(metrics: &str, reason: &str) -> u64 {
    metrics
        .lines()
        .find(|l| {
            l.starts_with("switchboard_dns_dropped_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The kernel's `drops` of the UDP sockets bound to `port` (`/proc/net/udp`).
fn kernel_drops(port: u16) -> u64 {
    let want = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1)?
                .ends_with(&want)
                .then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

#[tokio::test]
async fn an_instance_registered_is_in_the_next_answer_and_one_gone_leaves_it() {
    let (s, addr) = dns_server("").await;
    s.register_addr("mqtt", "10.0.0.1:1883").await;
    let q = query("mqtt.sb.test.", RecordType::A);
    assert_eq!(addresses(&udp(addr, &q).await.0), ["10.0.0.1"]);
    // No wait: the answer after the registration has it, over UDP and over TCP.
    let second = s.register_addr("mqtt", "10.0.0.2:1883").await;
    let mut both: Vec<String> = addresses(&udp(addr, &q).await.0);
    both.sort();
    assert_eq!(both, ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(addresses(&tcp(addr, &q).await).len(), 2);
    // An IPv6 instance answers AAAA and stays out of A.
    s.register_addr("mqtt", "[2001:db8::7]:1883").await;
    let aaaa = udp(addr, &query("mqtt.sb.test.", RecordType::AAAA)).await.0;
    assert_eq!(addresses(&aaaa), ["2001:db8::7"]);
    assert_eq!(addresses(&udp(addr, &q).await.0).len(), 2);
    // Deregistered: gone from the next answer.
    let resp = s
        .client
        .delete(s.url(&format!("/v1/services/mqtt/instances/{}", second.id)))
        .header("X-Lease", &second.lease)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    assert_eq!(addresses(&udp(addr, &q).await.0), ["10.0.0.1"]);
}

#[tokio::test]
async fn queries_the_kernel_drops_or_that_get_no_answer_are_counted() {
    let (s, addr) = dns_server("").await;
    // A TTL that outlives a slow flood.
    s.register("mqtt", json!({"address": "10.0.0.1:1883", "ttl_secs": 300}))
        .await;
    let before = s.metrics_text().await;
    let kernel_before = kernel_drops(addr.port());
    // A response (QR set) has nothing to answer to.
    let mut response = query("mqtt.sb.test.", RecordType::A).to_vec().unwrap();
    response[2] |= 0x80;
    assert_eq!(
        udp_raw(addr, &response, Duration::from_millis(300)).await,
        None
    );
    // A flood sent while the server's loop cannot run (it shares this test's
    // thread): its receive queue fills and the kernel drops the rest.
    // (Of a name no service has: each answer to `mqtt` would count a hand-out.)
    let flood = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let nope = query("nope.sb.test.", RecordType::A).to_vec().unwrap();
    for _ in 0..40_000 {
        let _ = flood.send_to(&nope, addr);
    }
    let wire = query("mqtt.sb.test.", RecordType::A).to_vec().unwrap();
    let kernel = kernel_drops(addr.port()) - kernel_before;
    assert!(kernel > 0, "the flood overflowed nothing");
    // The next datagram read carries the kernel's count; every drop is counted. (A
    // query sent while the queue is still full is dropped too: ask again.)
    eventually("the kernel's drops counted", || async {
        let answer = udp_raw(addr, &wire, Duration::from_millis(500)).await?;
        let m = Message::from_vec(&answer).unwrap();
        assert_eq!(addresses(&m), ["10.0.0.1"]);
        let now = s.metrics_text().await;
        let counted = dropped(&now, "receive_buffer") - dropped(&before, "receive_buffer");
        // Queries asked while the queue was still full were dropped too.
        let kernel_now = kernel_drops(addr.port()) - kernel_before;
        assert!(
            counted <= kernel_now,
            "{counted} counted, {kernel_now} dropped"
        );
        (counted == kernel_now && counted >= kernel).then_some(())
    })
    .await;
    let now = s.metrics_text().await;
    assert!(dropped(&now, "unanswerable") > dropped(&before, "unanswerable"));
}
