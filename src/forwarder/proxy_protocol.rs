//! PROXY protocol headers (HAProxy's spec, versions 1 and 2) that tell a backend the
//! device's real address. Pure: addresses in, bytes out.

use std::net::{IpAddr, SocketAddr};

use crate::config::ProxyProtocol;

/// The 12-byte signature that opens a version 2 header.
pub const V2_SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// The header for a connection from `client` accepted on `local`.
pub fn header(version: ProxyProtocol, client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    match version {
        ProxyProtocol::V1 => v1(client, local),
        ProxyProtocol::V2 => v2(client, local),
    }
}

/// Both addresses in one family: an IPv4 address facing IPv6 becomes v4-mapped.
fn same_family(client: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canon = |a: SocketAddr| match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    };
    let (c, l) = (canon(client), canon(local));
    match (c.ip(), l.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => (c, l),
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => a,
            };
            (v6(c), v6(l))
        }
    }
}

/// `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
pub fn v1(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (c, l) = same_family(client, local);
    let family = if c.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        c.ip(),
        l.ip(),
        c.port(),
        l.port()
    )
    .into_bytes()
}

/// Binary header: signature, `PROXY` command, TCP over IPv4 or IPv6, addresses, ports.
pub fn v2(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (c, l) = same_family(client, local);
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, command PROXY
    match (c.ip(), l.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(0x11); // AF_INET, STREAM
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            out.push(0x21); // AF_INET6, STREAM
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        _ => unreachable!("same_family returns one family"),
    }
    out.extend_from_slice(&c.port().to_be_bytes());
    out.extend_from_slice(&l.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_ipv4_and_ipv6() {
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let l: SocketAddr = "198.51.100.2:6665".parse().unwrap();
        assert_eq!(v1(c, l), b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 6665\r\n");
        let c: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let l: SocketAddr = "[::1]:6665".parse().unwrap();
        assert_eq!(v1(c, l), b"PROXY TCP6 2001:db8::1 ::1 5000 6665\r\n");
    }

    #[test]
    fn v1_mixed_families_use_ipv6() {
        let c: SocketAddr = "[::ffff:192.0.2.1]:5000".parse().unwrap();
        let l: SocketAddr = "198.51.100.2:6665".parse().unwrap();
        assert_eq!(v1(c, l), b"PROXY TCP4 192.0.2.1 198.51.100.2 5000 6665\r\n");
        let c: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let l: SocketAddr = "[2001:db8::2]:6665".parse().unwrap();
        assert_eq!(
            v1(c, l),
            b"PROXY TCP6 ::ffff:192.0.2.1 2001:db8::2 5000 6665\r\n"
        );
    }

    #[test]
    fn v2_ipv4_bytes() {
        let c: SocketAddr = "127.0.0.2:4660".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:6665".parse().unwrap();
        let mut expected = V2_SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 2, 127, 0, 0, 1]);
        expected.extend_from_slice(&[0x12, 0x34, 0x1A, 0x09]);
        assert_eq!(v2(c, l), expected);
    }

    #[test]
    fn v2_ipv6_length() {
        let c: SocketAddr = "[::1]:1".parse().unwrap();
        let l: SocketAddr = "[::1]:2".parse().unwrap();
        let h = v2(c, l);
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(&h[12..16], &[0x21, 0x21, 0, 36]);
        assert_eq!(&h[48..52], &[0, 1, 0, 2]);
    }
}
