//! Every listener of one configuration checked as a whole: the HTTP API (TCP), each
//! forward listener (TCP or UDP) and the DNS server (UDP and TCP on one port). No two
//! may take the same address and protocol: the second bind fails ("Address already in
//! use"), or, as forward listeners bind with `SO_REUSEPORT`, both bind and the kernel
//! splits the traffic between them at random. A wildcard address overlaps every address
//! it covers on its port; port 0 never collides (the kernel picks a free port).
//!
//! Must not bind sockets or know what a section's other keys mean.

use std::net::{IpAddr, SocketAddr};

use super::error::{ConfigError, invalid};
use super::{Config, ForwardProtocol};

/// The transport a listener binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    /// A listening stream socket.
    Tcp,
    /// A datagram socket.
    Udp,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "TCP",
            Transport::Udp => "UDP",
        }
    }
}

/// One socket a configuration binds, with the key that set its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listener {
    /// As the errors of its section name it, e.g. `forward[0].listen`, `dns.listen`.
    pub(super) key: String,
    /// Where it binds.
    pub(super) addr: SocketAddr,
    /// What it binds.
    pub(super) transport: Transport,
}

/// Every socket `config` binds, in file order: `http`, the forward listeners (named
/// by `forward_keys`, one per listener, as their section's errors name them), then
/// `dns.listen` twice, UDP and TCP.
pub(super) fn of(config: &Config, forward_keys: &[String]) -> Vec<Listener> {
    let at = |key: String, addr, transport| Listener {
        key,
        addr,
        transport,
    };
    let mut all = vec![at("http".to_owned(), config.http, Transport::Tcp)];
    all.extend(config.forwards.iter().zip(forward_keys).map(|(f, key)| {
        let transport = match f.protocol {
            ForwardProtocol::Tcp => Transport::Tcp,
            ForwardProtocol::Udp => Transport::Udp,
        };
        at(format!("{key}.listen"), f.listen, transport)
    }));
    if let Some(dns) = &config.dns {
        for transport in [Transport::Udp, Transport::Tcp] {
            all.push(at("dns.listen".to_owned(), dns.listen, transport));
        }
    }
    all
}

/// Refuses the first listener whose address and protocol overlap an earlier one's,
/// naming both keys.
///
/// # Errors
/// [`ConfigError::Invalid`] with the later listener's key.
pub(super) fn check(listeners: &[Listener]) -> Result<(), ConfigError> {
    for (i, later) in listeners.iter().enumerate() {
        let earlier = listeners[..i]
            .iter()
            .find(|l| l.transport == later.transport && overlap(l.addr, later.addr));
        if let Some(earlier) = earlier {
            return Err(invalid(
                later.key.as_str(),
                format!(
                    "{proto} {addr} overlaps {key} ({proto} {other}): two listeners cannot \
                     share an address and protocol; move one to another port",
                    proto = later.transport.name(),
                    addr = later.addr,
                    key = earlier.key,
                    other = earlier.addr,
                ),
            ));
        }
    }
    Ok(())
}

/// Whether binds of one protocol at `a` and at `b` collide: the same port (not 0) and
/// the same address, or a wildcard covering the other. `[::]` covers IPv4 addresses
/// too: our sockets are dual-stack (no `IPV6_V6ONLY`), as Linux makes them by default.
pub(super) fn overlap(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() {
        return false;
    }
    let (a, b) = (plain(a.ip()), plain(b.ip()));
    a == b || covers(a, b) || covers(b, a)
}

/// An IPv4-mapped IPv6 address (`[::ffff:127.0.0.1]`) as the IPv4 address it is.
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `wild` is a wildcard whose bind takes `other`'s traffic.
fn covers(wild: IpAddr, other: IpAddr) -> bool {
    match wild {
        IpAddr::V4(w) => w.is_unspecified() && other.is_ipv4(),
        IpAddr::V6(w) => w.is_unspecified(),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::cli::ServeArgs;

    fn at(key: &str, addr: &str, transport: Transport) -> Listener {
        Listener {
            key: key.to_owned(),
            addr: addr.parse().expect("test address"),
            transport,
        }
    }

    fn refused(listeners: &[Listener]) -> String {
        check(listeners).expect_err("overlap refused").to_string()
    }

    #[test]
    fn the_same_address_and_protocol_is_refused_naming_both_keys() {
        let err = refused(&[
            at("http", "127.0.0.1:8080", Transport::Tcp),
            at("forward[0].listen", "127.0.0.1:5353", Transport::Udp),
            at("dns.listen", "127.0.0.1:5353", Transport::Udp),
        ]);
        assert!(
            err.starts_with("invalid dns.listen:") && err.contains("forward[0].listen"),
            "{err}"
        );
    }

    #[test]
    fn other_protocols_ports_and_port_zero_are_accepted() {
        check(&[
            at("http", "127.0.0.1:5353", Transport::Tcp),
            at("forward[0].listen", "127.0.0.1:5353", Transport::Udp),
            at("forward[1].listen", "127.0.0.1:5354", Transport::Udp),
            at("forward[2].listen", "127.0.0.1:0", Transport::Tcp),
            at("forward[3].listen", "127.0.0.1:0", Transport::Tcp),
            at("forward[4].listen", "0.0.0.0:0", Transport::Tcp),
            at("forward[5].listen", "127.0.0.2:6665", Transport::Tcp),
            at("forward[6].listen", "127.0.0.3:6665", Transport::Tcp),
        ])
        .expect("no overlap");
    }

    #[test]
    fn a_wildcard_overlaps_the_addresses_it_covers() {
        for (wild, specific) in [
            ("0.0.0.0:6665", "127.0.0.1:6665"),
            ("[::]:6665", "[::1]:6665"),
            ("[::]:6665", "10.0.0.1:6665"),
            ("[::]:6665", "0.0.0.0:6665"),
            ("[::ffff:127.0.0.1]:6665", "127.0.0.1:6665"),
        ] {
            for pair in [[wild, specific], [specific, wild]] {
                let err = refused(&[
                    at("forward[0].listen", pair[0], Transport::Tcp),
                    at("forward[1].listen", pair[1], Transport::Tcp),
                ]);
                assert!(err.contains("forward[0].listen"), "{pair:?}: {err}");
            }
        }
        check(&[
            at("forward[0].listen", "0.0.0.0:6665", Transport::Tcp),
            at("forward[1].listen", "[::1]:6665", Transport::Tcp),
        ])
        .expect("an IPv4 wildcard takes no IPv6 traffic");
    }

    #[test]
    fn a_configuration_names_the_keys_of_its_section_errors() {
        let none = ServeArgs::default();
        for (text, args, later, earlier) in [
            (
                "[[forward]]\nlisten = \"127.0.0.1:5353\"\nprotocol = \"udp\"\n\
                 [dns]\nlisten = \"127.0.0.1:5353\"",
                &none,
                "dns.listen",
                "forward[0].listen",
            ),
            (
                "[[forward]]\nlisten = \"127.0.0.1:6665\"\nservice = \"a\"\n\
                 [[forward]]\nlisten = \"0.0.0.0:6665\"\nservice = \"b\"",
                &none,
                "forward[1].listen",
                "forward[0].listen",
            ),
            (
                "[dns]\nlisten = \"127.0.0.1:6665\"",
                &none,
                "dns.listen",
                "forward.listen",
            ),
            ("http = \"127.0.0.1:6665\"", &none, "forward.listen", "http"),
            (
                "",
                &ServeArgs {
                    forward: vec!["127.0.0.1:7000=a".into(), "127.0.0.1:7000=b".into()],
                    ..ServeArgs::default()
                },
                "--forward[1].listen",
                "--forward[0].listen",
            ),
        ] {
            let err = Config::from_toml(text, args).expect_err(text).to_string();
            assert!(
                err.starts_with(&format!("invalid {later}:")) && err.contains(earlier),
                "{text}: {err}"
            );
        }
        let mixed = "[[forward]]\nlisten = \"127.0.0.1:8080\"\nprotocol = \"udp\"\n\
                     [[forward]]\nlisten = \"127.0.0.1:6665\"\n\
                     [[forward]]\nlisten = \"127.0.0.1:6665\"\nprotocol = \"udp\"\n\
                     [dns]\nlisten = \"127.0.0.1:0\"";
        Config::from_toml(mixed, &none).expect("one port on two protocols");
    }

    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            Just(IpAddr::from([0, 0, 0, 0])),
            Just(IpAddr::from([127, 0, 0, 1])),
            any::<[u8; 4]>().prop_map(IpAddr::from),
            Just(IpAddr::from([0u16; 8])),
            any::<[u16; 8]>().prop_map(IpAddr::from),
        ]
    }

    fn transport() -> impl Strategy<Value = Transport> {
        prop_oneof![Just(Transport::Tcp), Just(Transport::Udp)]
    }

    proptest! {
        #[test]
        fn any_two_listeners_on_one_address_and_protocol_are_refused(
            ip in ip(), port in 1u16.., transport in transport(),
            first in "[a-z]{1,8}", second in "[a-z]{1,8}",
        ) {
            let addr = SocketAddr::new(ip, port);
            let listeners = [
                Listener { key: format!("{first}.listen"), addr, transport },
                Listener { key: format!("{second}[1].listen"), addr, transport },
            ];
            let err = check(&listeners).expect_err("overlap refused").to_string();
            prop_assert!(err.starts_with(&format!("invalid {second}[1].listen:")), "{}", err);
            prop_assert!(err.contains(&format!("{first}.listen")), "{}", err);
        }

        #[test]
        fn different_ports_or_protocols_are_accepted(
            a in ip(), b in ip(), port in 1u16.., other in 1u16.., transport in transport(),
        ) {
            let listener = |ip, port, transport| Listener {
                key: "forward[0].listen".to_owned(),
                addr: SocketAddr::new(ip, port),
                transport,
            };
            if port != other {
                prop_assert!(check(&[listener(a, port, transport), listener(b, other, transport)]).is_ok());
            }
            let (tcp, udp) = (listener(a, port, Transport::Tcp), listener(b, port, Transport::Udp));
            prop_assert!(check(&[tcp, udp]).is_ok());
            prop_assert!(check(&[listener(a, 0, transport), listener(a, 0, transport)]).is_ok());
        }
    }
}
