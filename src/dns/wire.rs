//! The hot query in wire form, without hickory: reads a plain `A`/`AAAA` query for
//! `<service>.<domain>` (one question, at most an EDNS OPT record without options)
//! and writes its answer straight into a reused buffer, the question copied as asked
//! (letter case kept for 0x20 clients) and every owner a pointer to it. Anything else
//! reads as `None` and goes the general way (`answer.rs` on hickory), which gives the
//! same bytes' meaning for these queries (a property test in `mod.rs` compares them).
//! Pure: no I/O, no allocation past the buffer's growth. Must not touch the registry
//! or sockets.

use std::net::IpAddr;

/// Size of a DNS header.
const HEADER: usize = 12;
/// An OPT record with no options: root name, type, class, TTL, RDLENGTH.
const OPT_LEN: usize = 11;
/// Type codes.
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
/// Class IN.
const CLASS_IN: u16 = 1;

/// The address family a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `A`.
    V4,
    /// `AAAA`.
    V6,
}

impl Family {
    /// Bytes of one answer record: name pointer, type, class, TTL, RDLENGTH, RDATA.
    fn record_len(self) -> usize {
        match self {
            Family::V4 => 12 + 4,
            Family::V6 => 12 + 16,
        }
    }

    fn type_code(self) -> u16 {
        match self {
            Family::V4 => TYPE_A,
            Family::V6 => TYPE_AAAA,
        }
    }
}

/// A plain address query, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plain<'a> {
    id: u16,
    recursion_desired: bool,
    checking_disabled: bool,
    /// Name, type and class as received.
    question: &'a [u8],
    /// The first label, lower-cased into [`Plain::service`]'s buffer by the reader.
    label: &'a [u8],
    /// The family asked.
    pub family: Family,
    /// The client's EDNS payload size; `None` without EDNS.
    edns: Option<u16>,
}

impl<'a> Plain<'a> {
    /// Reads `bytes` as a plain query under the zone whose apex in wire form (lower
    /// case) is `apex`; `None` for anything else.
    pub fn read(bytes: &'a [u8], apex: &[u8]) -> Option<Plain<'a>> {
        let header = bytes.get(..HEADER)?;
        let flags = header[2];
        // QR clear, opcode QUERY; AA, TC and the Z bits are not looked at, as in
        // hickory's reading.
        if flags & 0x80 != 0 || (flags >> 3) & 0x0f != 0 {
            return None;
        }
        let count = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
        if qd != 1 || an != 0 || ns != 0 || ar > 1 {
            return None;
        }
        // The name: uncompressed labels of 1..=63 bytes, the first the service.
        let mut at = HEADER;
        let first = usize::from(*bytes.get(at)?);
        if first == 0 || first > 63 {
            return None;
        }
        let label = bytes.get(at + 1..at + 1 + first)?;
        at += 1 + first;
        let rest = at;
        loop {
            let len = usize::from(*bytes.get(at)?);
            if len > 63 {
                return None;
            }
            at += 1 + len;
            if len == 0 {
                break;
            }
        }
        // The rest of the name must be the apex, which bounds the name's length.
        if !bytes.get(rest..at)?.eq_ignore_ascii_case(apex) {
            return None;
        }
        let kind = u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]);
        let class = u16::from_be_bytes([*bytes.get(at + 2)?, *bytes.get(at + 3)?]);
        let family = match kind {
            TYPE_A => Family::V4,
            TYPE_AAAA => Family::V6,
            _ => return None,
        };
        if class != CLASS_IN {
            return None;
        }
        let question = &bytes[HEADER..at + 4];
        let tail = &bytes[at + 4..];
        let edns = match (ar, tail) {
            (0, []) => None,
            // Root name, OPT, payload, extended RCODE 0, version 0, any flags, no
            // options; nothing after it.
            (1, [0, t0, t1, p0, p1, 0, 0, _, _, 0, 0])
                if u16::from_be_bytes([*t0, *t1]) == TYPE_OPT =>
            {
                Some(u16::from_be_bytes([*p0, *p1]))
            }
            _ => return None,
        };
        Some(Plain {
            id: u16::from_be_bytes([header[0], header[1]]),
            recursion_desired: flags & 0x01 != 0,
            checking_disabled: header[3] & 0x10 != 0,
            question,
            label,
            family,
            edns,
        })
    }

    /// The service asked, lower-cased into `buf`; `None` when the label cannot name
    /// a service or is one of `reserved` (the zone's own names: `addr`, `_tcp`,
    /// `nsN`), which the general way answers.
    pub fn service<'b>(&self, buf: &'b mut [u8; 63], reserved: &[Vec<u8>]) -> Option<&'b str> {
        let out = buf.get_mut(..self.label.len())?;
        for (o, b) in out.iter_mut().zip(self.label) {
            *o = b.to_ascii_lowercase();
        }
        // A dot inside a label is legal on the wire; the general way reads it.
        if out.contains(&b'.') || reserved.iter().any(|r| r.as_slice() == &*out) {
            return None;
        }
        let service = std::str::from_utf8(out).ok()?;
        crate::registry::validate::service_name(service)
            .is_ok()
            .then_some(service)
    }

    /// The largest answer allowed: 512 bytes without EDNS, the client's size up to
    /// `max_udp` with it, 65,535 over TCP.
    fn limit(&self, tcp: bool, max_udp: u16) -> usize {
        if tcp {
            return usize::from(u16::MAX);
        }
        usize::from(self.edns.map_or(512, |size| size.clamp(512, max_udp)))
    }

    /// Whether `records` answers of this query's family fit its limit whole: when
    /// not, the general way answers (and cuts with TC).
    pub fn fits(&self, records: usize, tcp: bool, max_udp: u16) -> bool {
        let opt = if self.edns.is_some() { OPT_LEN } else { 0 };
        let size = HEADER + self.question.len() + records * self.family.record_len() + opt;
        size <= self.limit(tcp, max_udp)
    }

    /// Starts the answer in `out` (cleared): the header (its answer count patched by
    /// [`Plain::finish`]) and the question as asked.
    pub fn begin(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.id.to_be_bytes());
        // QR, opcode QUERY, AA, RD as asked; RA clear; CD as asked, RCODE NOERROR.
        out.push(0x80 | 0x04 | u8::from(self.recursion_desired));
        out.push(if self.checking_disabled { 0x10 } else { 0 });
        out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(self.edns.is_some())]);
        out.extend_from_slice(self.question);
    }

    /// Adds one address record (owner: the question's name) when `ip` is of the
    /// query's family; says whether it did.
    pub fn push(&self, out: &mut Vec<u8>, ip: IpAddr, ttl: u32) -> bool {
        let ty = self.family.type_code().to_be_bytes();
        let head = |out: &mut Vec<u8>, len: u8| {
            out.extend_from_slice(&[0xc0, 0x0c, ty[0], ty[1], 0, 1]);
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&[0, len]);
        };
        match (self.family, ip) {
            (Family::V4, IpAddr::V4(v4)) => {
                head(out, 4);
                out.extend_from_slice(&v4.octets());
            }
            (Family::V6, IpAddr::V6(v6)) => {
                head(out, 16);
                out.extend_from_slice(&v6.octets());
            }
            _ => return false,
        }
        true
    }

    /// Ends the answer of `records` records: their count, and our OPT record when
    /// the query had one (our payload size, version 0, no flags).
    pub fn finish(&self, out: &mut Vec<u8>, records: u16, max_udp: u16) {
        if let Some(count) = out.get_mut(6..8) {
            count.copy_from_slice(&records.to_be_bytes());
        }
        if let Some(size) = self.edns {
            let ours = size.clamp(512, max_udp).to_be_bytes();
            out.extend_from_slice(&[0, 0, 41, ours[0], ours[1], 0, 0, 0, 0, 0, 0]);
        }
    }
}

/// `name` (lower case, fully qualified) in wire form: length-prefixed labels and the
/// root's 0.
pub fn name_wire(name: &hickory_proto::rr::Name) -> Vec<u8> {
    let mut wire = Vec::with_capacity(name.len() + 1);
    for label in name.iter() {
        wire.push(u8::try_from(label.len()).unwrap_or(63));
        wire.extend_from_slice(label);
    }
    wire.push(0);
    wire
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[u8], kind: u16, opt: Option<&[u8]>) -> Vec<u8> {
        let mut q = vec![
            0xbe,
            0xef,
            0x01,
            0x10,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(opt.is_some()),
        ];
        q.extend_from_slice(name);
        q.extend_from_slice(&kind.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        if let Some(opt) = opt {
            q.extend_from_slice(opt);
        }
        q
    }

    const APEX: &[u8] = b"\x02sb\x04test\x00";

    #[test]
    fn a_plain_query_is_read_and_anything_else_is_not() {
        let q = query(b"\x04MqTt\x02sB\x04test\x00", TYPE_A, None);
        let plain = Plain::read(&q, APEX).expect("plain");
        assert_eq!(plain.family, Family::V4);
        let mut buf = [0u8; 63];
        assert_eq!(plain.service(&mut buf, &[]), Some("mqtt"));
        assert_eq!(plain.service(&mut buf, &[b"mqtt".to_vec()]), None);
        // Another zone, another type, another class, a deeper name, a response, an
        // OPT with options or of version 1, trailing bytes: the general way.
        assert!(Plain::read(&query(b"\x04mqtt\x02sb\x03net\x00", TYPE_A, None), APEX).is_none());
        assert!(Plain::read(&query(b"\x04mqtt\x02sb\x04test\x00", 16, None), APEX).is_none());
        let mut chaos = q.clone();
        let at = chaos.len() - 1;
        chaos[at] = 3;
        assert!(Plain::read(&chaos, APEX).is_none());
        assert!(
            Plain::read(
                &query(b"\x01a\x04mqtt\x02sb\x04test\x00", TYPE_A, None),
                APEX
            )
            .is_none()
        );
        let mut response = q.clone();
        response[2] |= 0x80;
        assert!(Plain::read(&response, APEX).is_none());
        let opt_ok: &[u8] = &[0, 0, 41, 4, 0xd0, 0, 0, 0x80, 0, 0, 0];
        assert!(
            Plain::read(
                &query(b"\x04mqtt\x02sb\x04test\x00", TYPE_A, Some(opt_ok)),
                APEX
            )
            .is_some()
        );
        let with_option: &[u8] = &[0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 4, 0, 10, 0, 0];
        assert!(
            Plain::read(
                &query(b"\x04mqtt\x02sb\x04test\x00", TYPE_A, Some(with_option)),
                APEX
            )
            .is_none()
        );
        let v1: &[u8] = &[0, 0, 41, 4, 0xd0, 0, 1, 0, 0, 0, 0];
        assert!(
            Plain::read(
                &query(b"\x04mqtt\x02sb\x04test\x00", TYPE_A, Some(v1)),
                APEX
            )
            .is_none()
        );
        let mut trailing = q.clone();
        trailing.push(0);
        assert!(Plain::read(&trailing, APEX).is_none());
        for cut in 0..q.len() {
            assert!(Plain::read(&q[..cut], APEX).is_none(), "{cut}");
        }
    }
}
