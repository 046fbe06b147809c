//! PROXY protocol headers (HAProxy's spec, versions 1 and 2) that tell a backend the
//! device's real address, and version 2's TLVs for what a TLS listener learnt (the
//! SNI, the TLS version, the verified client certificate's CN). Pure: facts in,
//! bytes out.

use std::net::{IpAddr, SocketAddr};

use crate::config::ProxyProtocol;
use crate::tls::SessionFacts;

/// `PP2_TYPE_ALPN`: the negotiated application protocol.
pub const PP2_TYPE_ALPN: u8 = 0x01;
/// `PP2_TYPE_AUTHORITY`: the server name the client asked for (SNI).
pub const PP2_TYPE_AUTHORITY: u8 = 0x02;
/// `PP2_TYPE_SSL`: the TLS facts, with sub-TLVs.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// `PP2_SUBTYPE_SSL_VERSION`, inside `PP2_TYPE_SSL`: `TLSv1.3`, say.
pub const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// `PP2_SUBTYPE_SSL_CN`, inside `PP2_TYPE_SSL`: the client certificate's subject CN.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// `PP2_TYPE_SSL`'s client bits: TLS was used; a certificate came on this connection;
/// and in this session.
pub const PP2_CLIENT_SSL: u8 = 0x01;
/// See [`PP2_CLIENT_SSL`].
pub const PP2_CLIENT_CERT_CONN: u8 = 0x02;
/// See [`PP2_CLIENT_SSL`].
pub const PP2_CLIENT_CERT_SESS: u8 = 0x04;

/// Appends to a version 2 `header` the TLVs of what the listener learnt: the server
/// name (`PP2_TYPE_AUTHORITY`), and for a terminated TLS connection its ALPN and
/// `PP2_TYPE_SSL` (version; the client certificate's CN when one verified); fixes the
/// header's length field. Values longer than a TLV holds are left out.
pub fn append_tlvs(header: &mut Vec<u8>, server_name: Option<&str>, tls: Option<&SessionFacts>) {
    fn tlv(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
        if let Ok(len) = u16::try_from(value.len()) {
            out.push(kind);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(value);
        }
    }
    let server_name = server_name.or(tls.and_then(|t| t.server_name.as_deref()));
    if let Some(name) = server_name {
        tlv(header, PP2_TYPE_AUTHORITY, name.as_bytes());
    }
    if let Some(tls) = tls {
        if let Some(alpn) = &tls.alpn {
            tlv(header, PP2_TYPE_ALPN, alpn);
        }
        let mut ssl = Vec::with_capacity(64);
        let mut client = PP2_CLIENT_SSL;
        if tls.client_verified {
            client |= PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS;
        }
        ssl.push(client);
        // 0: a client certificate was presented and verified; anything else otherwise.
        let verify: u32 = u32::from(!tls.client_verified);
        ssl.extend_from_slice(&verify.to_be_bytes());
        tlv(&mut ssl, PP2_SUBTYPE_SSL_VERSION, tls.version.as_bytes());
        if let Some(cn) = &tls.client_cn {
            tlv(&mut ssl, PP2_SUBTYPE_SSL_CN, cn.as_bytes());
        }
        tlv(header, PP2_TYPE_SSL, &ssl);
    }
    // The length field counts everything after the 16 fixed bytes.
    if let Ok(len) = u16::try_from(header.len() - 16) {
        header[14..16].copy_from_slice(&len.to_be_bytes());
    }
}

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
    fn v2_tlvs_carry_the_server_name_and_the_tls_facts() {
        let c: SocketAddr = "127.0.0.2:4660".parse().unwrap();
        let l: SocketAddr = "127.0.0.1:6665".parse().unwrap();
        let mut h = v2(c, l);
        let facts = SessionFacts {
            version: "TLSv1.3".into(),
            server_name: Some("a.example.com".into()),
            client_cn: Some("dtu-7".into()),
            client_verified: true,
            alpn: Some(b"mqtt".to_vec()),
        };
        append_tlvs(&mut h, None, Some(&facts));
        let len = usize::from(u16::from_be_bytes([h[14], h[15]]));
        assert_eq!(len, h.len() - 16);
        let mut tlvs = &h[28..];
        let mut seen = Vec::new();
        while !tlvs.is_empty() {
            let n = usize::from(u16::from_be_bytes([tlvs[1], tlvs[2]]));
            seen.push((tlvs[0], tlvs[3..3 + n].to_vec()));
            tlvs = &tlvs[3 + n..];
        }
        assert_eq!(seen[0], (PP2_TYPE_AUTHORITY, b"a.example.com".to_vec()));
        assert_eq!(seen[1], (PP2_TYPE_ALPN, b"mqtt".to_vec()));
        let ssl = &seen[2].1;
        assert_eq!(seen[2].0, PP2_TYPE_SSL);
        assert_eq!(
            ssl[0],
            PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN | PP2_CLIENT_CERT_SESS
        );
        assert_eq!(&ssl[1..5], &[0, 0, 0, 0], "verified");
        assert_eq!(&ssl[5..8], &[PP2_SUBTYPE_SSL_VERSION, 0, 7]);
        assert_eq!(&ssl[8..15], b"TLSv1.3");
        assert_eq!(&ssl[15..18], &[PP2_SUBTYPE_SSL_CN, 0, 5]);
        assert_eq!(&ssl[18..], b"dtu-7");

        // Passthrough: the SNI alone.
        let mut h = v2(c, l);
        append_tlvs(&mut h, Some("b.example.com"), None);
        assert_eq!(&h[28..31], &[PP2_TYPE_AUTHORITY, 0, 13]);
        assert_eq!(usize::from(u16::from_be_bytes([h[14], h[15]])), 12 + 16);
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
