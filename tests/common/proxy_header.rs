//! The PROXY protocol headers a backend must see in front of a relayed `payload`,
//! built from the device's and the listener's TCP addresses (IPv4).

use std::net::SocketAddr;

/// `PROXY TCP4 <device> <listener> <ports>\r\n` and the payload.
pub fn v1(device: SocketAddr, listener: SocketAddr, payload: &str) -> String {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n{payload}",
        device.ip(),
        listener.ip(),
        device.port(),
        listener.port()
    )
}

/// The v2 signature, PROXY over TCP/IPv4, both addresses and ports, then the payload.
pub fn v2(device: SocketAddr, listener: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut expected = vec![
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11, 0x00,
        0x0C,
    ];
    let ip = |a: SocketAddr| match a.ip() {
        std::net::IpAddr::V4(v4) => v4.octets(),
        std::net::IpAddr::V6(_) => panic!("IPv4 expected"),
    };
    expected.extend_from_slice(&ip(device));
    expected.extend_from_slice(&ip(listener));
    expected.extend_from_slice(&device.port().to_be_bytes());
    expected.extend_from_slice(&listener.port().to_be_bytes());
    expected.extend_from_slice(payload);
    expected
}
