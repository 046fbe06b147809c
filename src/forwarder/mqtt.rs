//! The client identifier of an MQTT CONNECT packet (MQTT 3.1, 3.1.1 and 5), for
//! `hash = "mqtt_client_id"` (SPEC 9). Pure: bytes in, a verdict out; reading the
//! bytes off a socket is `peek.rs`'s.
//!
//! Only as much of the packet is read as the identifier needs: the fixed header, the
//! protocol name and level, the flags, the keep-alive, MQTT 5's properties, then the
//! identifier that opens the payload. Nothing else is checked (the broker does).

/// How many bytes a listener reads, at most, for the client identifier: MQTT 5's
/// properties come before it and may be long, but a CONNECT needing more than this is
/// refused rather than buffered.
pub const MAX_CONNECT_PEEK: usize = 16 * 1024;

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// The identifier is not complete yet.
    NeedMore,
    /// The client identifier (empty when the client sent none).
    ClientId(Vec<u8>),
    /// Not an MQTT CONNECT: why.
    Malformed(&'static str),
}

/// Reads `bytes` (the start of the stream) as a CONNECT packet.
pub fn client_id(bytes: &[u8]) -> Connect {
    match parse(bytes) {
        Ok(Some(id)) => Connect::ClientId(id.to_vec()),
        Ok(None) => Connect::NeedMore,
        Err(why) => Connect::Malformed(why),
    }
}

/// A cursor over the bytes read so far: `Ok(None)` from a read means "not there yet".
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    /// Where the packet ends (fixed header plus remaining length).
    end: usize,
}

type Step<T> = Result<Option<T>, &'static str>;

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        if self.at + n > self.end {
            return Err("a field runs past the packet's remaining length");
        }
        if self.at + n > self.bytes.len() {
            return Ok(None);
        }
        let out = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(Some(out))
    }

    fn u16(&mut self) -> Step<u16> {
        Ok(self.take(2)?.map(|b| u16::from_be_bytes([b[0], b[1]])))
    }

    /// A length-prefixed string or binary field.
    fn field(&mut self) -> Step<&'a [u8]> {
        let Some(len) = self.u16()? else {
            return Ok(None);
        };
        self.take(usize::from(len))
    }

    /// MQTT's variable byte integer (1 to 4 bytes).
    fn varint(&mut self) -> Step<usize> {
        let mut value = 0usize;
        for i in 0..4 {
            let Some(b) = self.take(1)? else {
                return Ok(None);
            };
            value |= usize::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                return Ok(Some(value));
            }
        }
        Err("a variable byte integer longer than 4 bytes")
    }
}

macro_rules! need {
    ($e:expr) => {
        match $e? {
            Some(v) => v,
            None => return Ok(None),
        }
    };
}

fn parse(bytes: &[u8]) -> Step<&[u8]> {
    let Some(&first) = bytes.first() else {
        return Ok(None);
    };
    if first != 0x10 {
        return Err("the first packet is not a CONNECT (type 1, flags 0)");
    }
    // The remaining length, read with no packet end yet.
    let mut head = Cursor {
        bytes,
        at: 1,
        end: usize::MAX,
    };
    let remaining = need!(head.varint());
    let mut c = Cursor {
        bytes,
        at: head.at,
        end: head.at + remaining,
    };
    let name = need!(c.field());
    let level = need!(c.take(1))[0];
    match (name, level) {
        (b"MQIsdp", 3) | (b"MQTT", 4 | 5) => {}
        (b"MQIsdp" | b"MQTT", _) => return Err("an MQTT protocol level other than 3, 4 or 5"),
        _ => return Err("a protocol name other than MQTT or MQIsdp"),
    }
    let flags = need!(c.take(1))[0];
    if flags & 0x01 != 0 {
        return Err("the CONNECT flags' reserved bit is set");
    }
    need!(c.u16()); // keep alive
    if level == 5 {
        let properties = need!(c.varint());
        need!(c.take(properties));
    }
    let id = need!(c.field());
    if std::str::from_utf8(id).is_err() {
        return Err("the client identifier is not UTF-8");
    }
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A CONNECT as a client library writes it.
    fn connect(name: &[u8], level: u8, id: &[u8], properties: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&(name.len() as u16).to_be_bytes());
        body.extend_from_slice(name);
        body.push(level);
        body.push(0x02); // clean session
        body.extend_from_slice(&60u16.to_be_bytes());
        if level == 5 {
            body.push(properties.len() as u8);
            body.extend_from_slice(properties);
        }
        body.extend_from_slice(&(id.len() as u16).to_be_bytes());
        body.extend_from_slice(id);
        let mut out = vec![0x10];
        let mut len = body.len();
        loop {
            let mut b = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                b |= 0x80;
            }
            out.push(b);
            if len == 0 {
                break;
            }
        }
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn reads_the_id_of_every_version() {
        let v31 = connect(b"MQIsdp", 3, b"dtu-1", &[]);
        let v311 = connect(b"MQTT", 4, b"dtu-2", &[]);
        // Session expiry interval (0x11) and receive maximum (0x21).
        let v5 = connect(b"MQTT", 5, b"dtu-3", &[0x11, 0, 0, 0, 10, 0x21, 0, 20]);
        assert_eq!(client_id(&v31), Connect::ClientId(b"dtu-1".to_vec()));
        assert_eq!(client_id(&v311), Connect::ClientId(b"dtu-2".to_vec()));
        assert_eq!(client_id(&v5), Connect::ClientId(b"dtu-3".to_vec()));
        assert_eq!(
            client_id(&connect(b"MQTT", 4, b"", &[])),
            Connect::ClientId(Vec::new())
        );
    }

    #[test]
    fn every_prefix_needs_more_and_garbage_is_malformed() {
        let packet = connect(b"MQTT", 5, b"device-42", &[0x11, 0, 0, 0, 10]);
        for end in 0..packet.len() {
            assert_eq!(client_id(&packet[..end]), Connect::NeedMore, "prefix {end}");
        }
        assert!(matches!(
            client_id(b"GET / HTTP/1.1\r\n"),
            Connect::Malformed(_)
        ));
        assert!(matches!(
            client_id(&connect(b"MQTT", 6, b"x", &[])),
            Connect::Malformed(_)
        ));
        assert!(matches!(
            client_id(&connect(b"AMQP", 4, b"x", &[])),
            Connect::Malformed(_)
        ));
        assert!(matches!(
            client_id(&[0x10, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Connect::Malformed(_)
        ));
        // A remaining length shorter than the fields it holds.
        let mut short = connect(b"MQTT", 4, b"abcdef", &[]);
        short[1] -= 3;
        assert!(matches!(client_id(&short), Connect::Malformed(_)));
    }

    proptest! {
        #[test]
        fn any_id_round_trips_and_any_bytes_give_a_verdict(
            id in "[a-zA-Z0-9:/_-]{0,64}",
            level in prop::sample::select(vec![3u8, 4, 5]),
            junk in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let name: &[u8] = if level == 3 { b"MQIsdp" } else { b"MQTT" };
            let mut packet = connect(name, level, id.as_bytes(), &[]);
            packet.extend_from_slice(&junk);
            prop_assert_eq!(client_id(&packet), Connect::ClientId(id.into_bytes()));
            // Never a panic, whatever the bytes.
            let _ = client_id(&junk);
        }
    }
}
