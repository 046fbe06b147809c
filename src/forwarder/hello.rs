//! The server name of a TLS ClientHello, for SNI routing without termination (SPEC
//! 9, nginx's `ssl_preread`). Pure: the bytes read so far in, a verdict out. rustls'
//! `Acceptor` parses the records and the hello (fragmented over several records
//! included), so the parse is the one a terminating listener would make; reading the
//! bytes off a socket is `peek.rs`'s.

use rustls::server::Acceptor;

/// How many bytes of a ClientHello a listener reads, at most (nginx's
/// `preread_buffer_size` is 16k): a hello with post-quantum key shares is about 2 KiB.
pub const MAX_HELLO_PEEK: usize = 16 * 1024;

/// What the bytes read so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// The hello is not complete yet.
    NeedMore,
    /// A complete hello, naming this server (`None`: no SNI).
    ServerName(Option<String>),
    /// Not a TLS ClientHello: why.
    Malformed(String),
}

/// Reads `bytes` (the start of the stream) as a ClientHello.
pub fn server_name(bytes: &[u8]) -> Hello {
    // A handshake record not yet all in cannot be decided: no parse for it (a hello
    // read in several pieces would be parsed from the start each time).
    if let [22, _, _, hi, lo, ..] = *bytes {
        let record = usize::from(u16::from_be_bytes([hi, lo]));
        if record > 16 * 1024 {
            return Hello::Malformed(format!("a {record}-byte record: TLS allows 16384"));
        }
        if bytes.len() < 5 + record {
            return Hello::NeedMore;
        }
    }
    let mut acceptor = Acceptor::default();
    let mut rest = bytes;
    // `read_tls` takes a record's worth at a time; offered again until all is in.
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => return Hello::Malformed(err.to_string()),
        }
        match acceptor.accept() {
            Ok(None) => {}
            Ok(Some(accepted)) => {
                let name = accepted.client_hello().server_name().map(str::to_owned);
                return Hello::ServerName(name);
            }
            Err((err, _)) => return Hello::Malformed(err.to_string()),
        }
    }
    match acceptor.accept() {
        Ok(None) => Hello::NeedMore,
        Ok(Some(accepted)) => {
            Hello::ServerName(accepted.client_hello().server_name().map(str::to_owned))
        }
        Err((err, _)) => Hello::Malformed(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first flight of a real rustls client for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let provider = crate::tls::load::provider();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let server = rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn reads_the_name_of_a_real_hello_and_needs_all_of_it() {
        let hello = client_hello("a.example.com");
        assert_eq!(
            server_name(&hello),
            Hello::ServerName(Some("a.example.com".into()))
        );
        for end in [0, 1, 5, 6, hello.len() / 2, hello.len() - 1] {
            assert_eq!(server_name(&hello[..end]), Hello::NeedMore, "prefix {end}");
        }
        // An IP address is never sent as SNI.
        assert_eq!(
            server_name(&client_hello("127.0.0.1")),
            Hello::ServerName(None)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            server_name(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
            Hello::Malformed(_)
        ));
        // A handshake record that is not a ClientHello (type 2, ServerHello).
        let mut hello = client_hello("a.example.com");
        hello[5] = 2;
        assert!(matches!(server_name(&hello), Hello::Malformed(_)));
        // A record longer than TLS allows.
        assert!(matches!(
            server_name(&[22, 3, 1, 0xff, 0xff, 1, 0, 0]),
            Hello::Malformed(_)
        ));
    }
}
