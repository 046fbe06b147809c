//! What the zone answers to one DNS question, as a pure function of the question and
//! the fleet's ranking: records, response code and the authoritative bit. No I/O.
//!
//! Names in the zone `<domain>`:
//! - the apex: `SOA`, `NS` (glue for in-zone name servers in the additional section);
//! - `nsN.<domain>`: the configured name servers' addresses;
//! - `<service>.<domain>`: `A`/`AAAA`, the service's live instances that are IP
//!   literals of that family, best first (the first counts a hand-out);
//! - `_<service>._tcp.<domain>`: `SRV`, best first, priority by rank, each target a
//!   name under `addr.<domain>` that encodes its IP (as Consul's `.addr.` names do),
//!   with its address in the additional section;
//! - `<hex>.addr.<domain>`: the address the hex spells.
//!
//! An unknown service is `NXDOMAIN`; a known one with no record of the asked type is
//! `NOERROR` with no answer (`NODATA`). Both carry the zone's `SOA` in the authority
//! section, so resolvers cache the negative answer for the SOA minimum (the TTL).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, NS, SOA, SRV};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// The ranked addresses of a service, as the registry gives them.
pub trait Fleet {
    /// Up to `limit` `host:port` addresses of `service`'s live instances that `keep`
    /// accepts, best first, the first counting one pending hand-out; `None` when no
    /// such service is known.
    fn ranked(
        &self,
        service: &str,
        limit: usize,
        keep: &dyn Fn(&str) -> bool,
    ) -> Option<Vec<String>>;

    /// [`Fleet::ranked`] handed to `each` address by address instead of collected
    /// (the same ranking and hand-out); false when no such service is known.
    fn each_ranked(
        &self,
        service: &str,
        limit: usize,
        keep: &dyn Fn(&str) -> bool,
        each: &mut dyn FnMut(&str),
    ) -> bool {
        match self.ranked(service, limit, keep) {
            Some(addresses) => {
                addresses.iter().for_each(|a| each(a));
                true
            }
            None => false,
        }
    }
}

impl Fleet for crate::hub::Hub {
    fn ranked(
        &self,
        service: &str,
        limit: usize,
        keep: &dyn Fn(&str) -> bool,
    ) -> Option<Vec<String>> {
        self.dns_addresses(service, limit, keep)
    }

    fn each_ranked(
        &self,
        service: &str,
        limit: usize,
        keep: &dyn Fn(&str) -> bool,
        each: &mut dyn FnMut(&str),
    ) -> bool {
        self.dns_each(service, limit, keep, each)
    }
}

/// Why a zone cannot be built: a name in it is not a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ZoneError(String);

/// The zone and how it answers.
#[derive(Debug, Clone)]
pub struct Zone {
    /// The apex, lower case, fully qualified.
    apex: Name,
    /// `addr.<apex>`, under which SRV targets live.
    addr: Name,
    /// `_tcp.<apex>`.
    tcp: Name,
    /// TTL of every record, and the SOA minimum (negative caching).
    ttl: u32,
    /// Records per answer at most.
    answers: usize,
    /// The name servers: `nsN.<apex>` and their addresses.
    name_servers: Vec<(Name, IpAddr)>,
    soa: Record,
    /// The apex in wire form, for `wire.rs`'s reading of the hot query.
    apex_wire: Vec<u8>,
    /// The zone's own first-level labels (`addr`, `_tcp`, `nsN`), lower case: no
    /// service answers there.
    reserved: Vec<Vec<u8>>,
}

impl Zone {
    /// The zone `domain` (fully qualified, e.g. `sb.example.com.`), its records living
    /// `ttl` seconds, at most `answers` addresses per answer, served by `name_servers`
    /// (named `ns1`, `ns2`, ... in the zone).
    ///
    /// # Errors
    /// [`ZoneError`] when `domain` (or a name under it) is not a valid DNS name.
    pub fn new(
        domain: &str,
        ttl: u32,
        answers: usize,
        name_servers: &[IpAddr],
    ) -> Result<Zone, ZoneError> {
        let apex = Name::from_ascii(domain)
            .map_err(|e| ZoneError(format!("{domain:?} is not a DNS name: {e}")))?
            .to_lowercase();
        let mut apex = apex;
        apex.set_fqdn(true);
        let child = |label: &str| {
            Name::from_ascii(label)
                .and_then(|l| l.append_domain(&apex))
                .map_err(|e| ZoneError(format!("{label}.{apex} is not a DNS name: {e}")))
        };
        let name_servers = name_servers
            .iter()
            .enumerate()
            .map(|(i, ip)| Ok((child(&format!("ns{}", i + 1))?, *ip)))
            .collect::<Result<Vec<_>, ZoneError>>()?;
        let primary = match name_servers.first() {
            Some((name, _)) => name.clone(),
            None => apex.clone(),
        };
        let soa = Record::from_rdata(
            apex.clone(),
            ttl,
            RData::SOA(SOA::new(
                primary,
                child("hostmaster")?,
                1,
                3600,
                600,
                86_400,
                ttl,
            )),
        );
        let mut reserved = vec![b"addr".to_vec(), b"_tcp".to_vec()];
        reserved.extend((1..=name_servers.len()).map(|i| format!("ns{i}").into_bytes()));
        Ok(Zone {
            addr: child("addr")?,
            tcp: child("_tcp")?,
            apex_wire: super::wire::name_wire(&apex),
            reserved,
            apex,
            ttl,
            answers: answers.max(1),
            name_servers,
            soa,
        })
    }

    /// The zone's apex.
    pub fn apex(&self) -> &Name {
        &self.apex
    }

    /// The apex in wire form, lower case.
    pub fn apex_wire(&self) -> &[u8] {
        &self.apex_wire
    }

    /// The first-level names that are the zone's own, not services.
    pub fn reserved_labels(&self) -> &[Vec<u8>] {
        &self.reserved
    }

    /// The TTL of every record.
    pub fn ttl(&self) -> u32 {
        self.ttl
    }

    /// Records per answer at most.
    pub fn answers(&self) -> usize {
        self.answers
    }

    /// The response to `request` (a decoded query), or `None` when none is due (it is
    /// itself a response). The caller fits it to the transport's size.
    pub fn respond(&self, request: &Message, fleet: &dyn Fleet) -> Option<Message> {
        let meta = &request.metadata;
        if meta.message_type == hickory_proto::op::MessageType::Response {
            return None;
        }
        let mut response = Message::response(meta.id, meta.op_code);
        response.metadata.recursion_desired = meta.recursion_desired;
        response.metadata.checking_disabled = meta.checking_disabled;
        // The question is echoed only when there is one: one always fits 512 bytes
        // (a name is at most 255), a long list of them need not.
        if request.queries.len() == 1 {
            response.queries = request.queries.clone();
        }
        if let Some(edns) = &request.edns {
            let mut ours = hickory_proto::op::Edns::new();
            ours.set_max_payload(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            if edns.version() > 0 {
                // RFC 6891: only version 0 exists.
                response.metadata.response_code = ResponseCode::BADVERS;
                response.set_edns(ours);
                return Some(response);
            }
            response.set_edns(ours);
        }
        if meta.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return Some(response);
        }
        let [question] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return Some(response);
        };
        let name = question.name().to_lowercase();
        if question.query_class() != DNSClass::IN || !self.apex.zone_of(&name) {
            response.metadata.response_code = ResponseCode::Refused;
            return Some(response);
        }
        response.metadata.authoritative = true;
        // The owner name as asked: clients that randomise letter case (0x20) check it.
        let owner = question.name().clone();
        let found = self.lookup(&name, &owner, question.query_type(), fleet);
        match found {
            Found::Records {
                answers,
                additionals,
            } => {
                response.answers = answers;
                response.additionals = additionals;
            }
            Found::NoData => response.authorities.push(self.soa.clone()),
            Found::NxDomain => {
                response.metadata.response_code = ResponseCode::NXDomain;
                response.authorities.push(self.soa.clone());
            }
        }
        if response.answers.is_empty() && response.authorities.is_empty() {
            response.authorities.push(self.soa.clone());
        }
        Some(response)
    }

    /// The records at `name` (lower case) of type `kind`.
    fn lookup(&self, name: &Name, owner: &Name, kind: RecordType, fleet: &dyn Fleet) -> Found {
        let depth = name.num_labels() - self.apex.num_labels();
        if *name == self.apex {
            return match kind {
                RecordType::SOA => Found::records(vec![self.soa.clone()]),
                RecordType::NS => Found::Records {
                    answers: self
                        .name_servers
                        .iter()
                        .map(|(ns, _)| self.record(owner, RData::NS(NS(ns.clone()))))
                        .collect(),
                    additionals: self
                        .name_servers
                        .iter()
                        .map(|(ns, ip)| self.address_record(ns, *ip))
                        .collect(),
                },
                _ => Found::NoData,
            };
        }
        if let Some((_, ip)) = self.name_servers.iter().find(|(ns, _)| ns == name) {
            return Found::of_family(kind, [self.address_record(owner, *ip)]);
        }
        if *name == self.addr || *name == self.tcp {
            // Empty non-terminals: they exist (names below them do), RFC 8020.
            return Found::NoData;
        }
        if self.addr.zone_of(name) && depth == 2 {
            return match decode_addr_label(first_label(name)) {
                Some(ip) => Found::of_family(kind, [self.address_record(owner, ip)]),
                None => Found::NxDomain,
            };
        }
        if self.tcp.zone_of(name) && depth == 2 {
            let label = first_label(name);
            let Some(service) = label.strip_prefix('_') else {
                return Found::NxDomain;
            };
            if !valid_service(service) {
                return Found::NxDomain;
            }
            return self.srv(service, owner, kind, fleet);
        }
        if depth == 1 {
            let service = first_label(name);
            if !valid_service(&service) {
                return Found::NxDomain;
            }
            let family: fn(&SocketAddr) -> bool = match kind {
                RecordType::A => |a| a.is_ipv4(),
                RecordType::AAAA => |a| a.is_ipv6(),
                // Known or not decides NOERROR or NXDOMAIN; nothing is handed out.
                _ => |_| false,
            };
            let keep = |address: &str| address.parse::<SocketAddr>().is_ok_and(|a| family(&a));
            let limit = if matches!(kind, RecordType::A | RecordType::AAAA) {
                self.answers
            } else {
                0
            };
            return match fleet.ranked(&service, limit, &keep) {
                None => Found::NxDomain,
                Some(addresses) => Found::of_family(
                    kind,
                    addresses
                        .iter()
                        .filter_map(|a| a.parse::<SocketAddr>().ok())
                        .map(|a| self.address_record(owner, a.ip())),
                ),
            };
        }
        Found::NxDomain
    }

    /// `SRV` for `_<service>._tcp`: every live instance with an IP literal or a host
    /// name, priority by rank.
    fn srv(&self, service: &str, owner: &Name, kind: RecordType, fleet: &dyn Fleet) -> Found {
        let wanted = kind == RecordType::SRV;
        let limit = if wanted { self.answers } else { 0 };
        // For another type nothing is kept, so nothing is handed out: the ranking
        // counts a hand-out for the first instance it keeps.
        let keep = |address: &str| wanted && target(address).is_some();
        let Some(addresses) = fleet.ranked(service, limit, &keep) else {
            return Found::NxDomain;
        };
        if !wanted {
            return Found::NoData;
        }
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        for (rank, address) in addresses.iter().enumerate() {
            let Some((host, port)) = target(address) else {
                continue;
            };
            let priority = u16::try_from(rank).unwrap_or(u16::MAX);
            let name = match host {
                Target::Ip(ip) => {
                    let Ok(name) = Name::from_ascii(encode_addr_label(ip))
                        .and_then(|l| l.append_domain(&self.addr))
                    else {
                        continue;
                    };
                    additionals.push(self.address_record(&name, ip));
                    name
                }
                Target::Host(name) => name,
            };
            answers.push(self.record(owner, RData::SRV(SRV::new(priority, 1, port, name))));
        }
        if answers.is_empty() {
            Found::NoData
        } else {
            Found::Records {
                answers,
                additionals,
            }
        }
    }

    fn record(&self, owner: &Name, data: RData) -> Record {
        Record::from_rdata(owner.clone(), self.ttl, data)
    }

    fn address_record(&self, owner: &Name, ip: IpAddr) -> Record {
        match ip {
            IpAddr::V4(v4) => self.record(owner, RData::A(A(v4))),
            IpAddr::V6(v6) => self.record(owner, RData::AAAA(AAAA(v6))),
        }
    }
}

/// Largest UDP payload answered, whatever the client offers: 1232 bytes avoids IP
/// fragmentation on any path (DNS Flag Day 2020).
pub const MAX_UDP_PAYLOAD: u16 = 1232;

/// What a name holds for one type.
enum Found {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    NoData,
    NxDomain,
}

impl Found {
    fn records(answers: Vec<Record>) -> Found {
        Found::Records {
            answers,
            additionals: Vec::new(),
        }
    }

    /// The address records that match `kind` (`A` or `AAAA`); `NODATA` when none do.
    fn of_family(kind: RecordType, records: impl IntoIterator<Item = Record>) -> Found {
        let answers: Vec<Record> = records
            .into_iter()
            .filter(|r| r.record_type() == kind)
            .collect();
        if answers.is_empty() {
            Found::NoData
        } else {
            Found::records(answers)
        }
    }
}

/// Where an SRV record points.
enum Target {
    Ip(IpAddr),
    Host(Name),
}

/// The SRV target and port of a `host:port` address; `None` for a Unix socket or an
/// address that is not `host:port`.
fn target(address: &str) -> Option<(Target, u16)> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Some((Target::Ip(addr.ip()), addr.port()));
    }
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let mut name = Name::from_ascii(host).ok()?;
    name.set_fqdn(true);
    Some((Target::Host(name), port))
}

/// The first label of `name`, as text (lower case: names are lowered before).
fn first_label(name: &Name) -> String {
    name.iter()
        .next()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .unwrap_or_default()
}

/// Service names as the registry accepts them (a DNS label cannot hold others).
fn valid_service(name: &str) -> bool {
    crate::registry::validate::service_name(name).is_ok()
}

/// The `addr.` label of an IP: 8 hex digits for IPv4, 32 for IPv6.
fn encode_addr_label(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => hex::encode(v4.octets()),
        IpAddr::V6(v6) => hex::encode(v6.octets()),
    }
}

/// The IP an `addr.` label spells, if it spells one.
fn decode_addr_label(label: String) -> Option<IpAddr> {
    let bytes = hex::decode(label).ok()?;
    if let Ok(v4) = <[u8; 4]>::try_from(bytes.as_slice()) {
        return Some(Ipv4Addr::from(v4).into());
    }
    let v6 = <[u8; 16]>::try_from(bytes.as_slice()).ok()?;
    Some(Ipv6Addr::from(v6).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Query};
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A fleet of fixed lists that records what was asked: the service, the limit,
    /// and whether anything was kept (a real ranking then counts a hand-out).
    #[derive(Default)]
    struct Fixed {
        services: HashMap<&'static str, Vec<&'static str>>,
        asked: RefCell<Vec<(String, usize, bool)>>,
    }

    impl Fleet for Fixed {
        fn ranked(
            &self,
            service: &str,
            limit: usize,
            keep: &dyn Fn(&str) -> bool,
        ) -> Option<Vec<String>> {
            let list = self.services.get(service)?;
            let kept: Vec<String> = list
                .iter()
                .filter(|a| keep(a))
                .take(limit.max(1))
                .map(|a| (*a).to_owned())
                .collect();
            self.asked
                .borrow_mut()
                .push((service.to_owned(), limit, !kept.is_empty()));
            Some(kept.into_iter().take(limit).collect())
        }
    }

    fn fleet() -> Fixed {
        let mut f = Fixed::default();
        f.services.insert(
            "mqtt",
            vec![
                "10.0.0.2:1883",
                "[2001:db8::1]:1883",
                "10.0.0.1:1884",
                "unix:/run/x.sock",
            ],
        );
        f.services.insert("empty", vec![]);
        f.services.insert("named", vec!["broker.example.net:1883"]);
        f
    }

    fn zone() -> Zone {
        Zone::new("sb.example.com.", 5, 3, &["192.0.2.53".parse().unwrap()]).unwrap()
    }

    fn ask(name: &str, kind: RecordType, fleet: &Fixed) -> Message {
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        zone().respond(&q, fleet).expect("a response")
    }

    fn data(m: &Message) -> Vec<String> {
        m.answers.iter().map(|r| r.data.to_string()).collect()
    }

    #[test]
    fn a_and_aaaa_list_the_family_best_first_with_the_ttl() {
        let f = fleet();
        let a = ask("mqtt.sb.example.com.", RecordType::A, &f);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative);
        assert_eq!(data(&a), ["10.0.0.2", "10.0.0.1"]);
        assert!(a.answers.iter().all(|r| r.ttl == 5));
        let aaaa = ask("MQTT.sb.Example.com.", RecordType::AAAA, &f);
        assert_eq!(data(&aaaa), ["2001:db8::1"]);
        // The owner keeps the case asked.
        assert_eq!(aaaa.answers[0].name.to_ascii(), "MQTT.sb.Example.com.");
        assert_eq!(f.asked.borrow()[0], ("mqtt".to_owned(), 3, true));
    }

    #[test]
    fn unknown_is_nxdomain_and_known_but_empty_is_nodata_both_with_the_soa() {
        let f = fleet();
        let nx = ask("nope.sb.example.com.", RecordType::A, &f);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
        let empty = ask("empty.sb.example.com.", RecordType::A, &f);
        assert_eq!(empty.metadata.response_code, ResponseCode::NoError);
        assert!(empty.answers.is_empty());
        assert_eq!(empty.authorities[0].record_type(), RecordType::SOA);
        // Another type at a known service: NODATA, and no hand-out asked for.
        let txt = ask("mqtt.sb.example.com.", RecordType::TXT, &f);
        assert_eq!(txt.metadata.response_code, ResponseCode::NoError);
        assert!(txt.answers.is_empty());
        assert!(!f.asked.borrow().last().unwrap().2, "nothing handed out");
        let srv_txt = ask("_mqtt._tcp.sb.example.com.", RecordType::TXT, &f);
        assert_eq!(srv_txt.metadata.response_code, ResponseCode::NoError);
        assert!(!f.asked.borrow().last().unwrap().2, "nothing handed out");
        // Deeper names and labels no service can have do not exist.
        let deeper = ask("a.mqtt.sb.example.com.", RecordType::A, &f);
        assert_eq!(deeper.metadata.response_code, ResponseCode::NXDomain);
        let mut bad = Message::query();
        let labels: [&[u8]; 4] = [b"bad name!", b"sb", b"example", b"com"];
        let mut name = Name::from_labels(labels).unwrap();
        name.set_fqdn(true);
        bad.add_query(Query::query(name, RecordType::A));
        let m = zone().respond(&bad, &f).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn srv_gives_ports_priority_by_rank_and_glue_that_resolves() {
        let f = fleet();
        let srv = ask("_mqtt._tcp.sb.example.com.", RecordType::SRV, &f);
        let records: Vec<(u16, u16, String)> = srv
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => (s.priority, s.port, s.target.to_ascii()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            records,
            [
                (0, 1883, "0a000002.addr.sb.example.com.".to_owned()),
                (
                    1,
                    1883,
                    "20010db8000000000000000000000001.addr.sb.example.com.".to_owned()
                ),
                (2, 1884, "0a000001.addr.sb.example.com.".to_owned()),
            ]
        );
        assert_eq!(srv.additionals.len(), 3);
        let glue = ask("0a000002.addr.sb.example.com.", RecordType::A, &f);
        assert_eq!(data(&glue), ["10.0.0.2"]);
        let named = ask("_named._tcp.sb.example.com.", RecordType::SRV, &f);
        match &named.answers[0].data {
            RData::SRV(s) => assert_eq!(s.target.to_ascii(), "broker.example.net."),
            other => panic!("{other:?}"),
        }
        let nx = ask("_nope._tcp.sb.example.com.", RecordType::SRV, &f);
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        let ent = ask("_tcp.sb.example.com.", RecordType::SRV, &f);
        assert_eq!(ent.metadata.response_code, ResponseCode::NoError);
    }

    #[test]
    fn the_apex_answers_soa_and_ns_with_glue() {
        let f = fleet();
        let soa = ask("sb.example.com.", RecordType::SOA, &f);
        assert_eq!(soa.answers[0].record_type(), RecordType::SOA);
        let ns = ask("sb.example.com.", RecordType::NS, &f);
        assert_eq!(data(&ns), ["ns1.sb.example.com."]);
        assert_eq!(ns.additionals[0].data.to_string(), "192.0.2.53");
        let a = ask("ns1.sb.example.com.", RecordType::A, &f);
        assert_eq!(data(&a), ["192.0.2.53"]);
    }

    #[test]
    fn foreign_names_classes_opcodes_and_question_counts_are_refused_or_errors() {
        let f = fleet();
        let other = ask("example.org.", RecordType::A, &f);
        assert_eq!(other.metadata.response_code, ResponseCode::Refused);
        assert!(!other.metadata.authoritative);
        let mut two = Message::query();
        two.add_query(Query::query(
            Name::from_ascii("a.sb.example.com.").unwrap(),
            RecordType::A,
        ));
        two.add_query(Query::query(
            Name::from_ascii("b.sb.example.com.").unwrap(),
            RecordType::A,
        ));
        let m = zone().respond(&two, &f).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let mut update = Message::new(7, hickory_proto::op::MessageType::Query, OpCode::Update);
        update.add_query(Query::query(
            Name::from_ascii("sb.example.com.").unwrap(),
            RecordType::SOA,
        ));
        let m = zone().respond(&update, &f).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
        let mut v1 = Message::query();
        v1.add_query(Query::query(
            Name::from_ascii("mqtt.sb.example.com.").unwrap(),
            RecordType::A,
        ));
        let mut edns = Edns::new();
        edns.set_version(1);
        v1.set_edns(edns);
        let m = zone().respond(&v1, &f).unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::BADVERS);
        // A response is never answered.
        let response = Message::response(1, OpCode::Query);
        assert!(zone().respond(&response, &f).is_none());
    }

    #[test]
    fn addr_labels_round_trip() {
        for ip in ["10.1.2.3", "::1", "2001:db8::ff"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(decode_addr_label(encode_addr_label(ip)), Some(ip));
        }
        assert_eq!(decode_addr_label("zz".to_owned()), None);
        assert_eq!(decode_addr_label("0a0b".to_owned()), None);
    }
}
