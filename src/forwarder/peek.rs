//! Reading the first bytes of a device's stream until a parser can decide (the
//! ClientHello of `hello.rs`, the MQTT CONNECT of `mqtt.rs`), within a byte bound and a
//! deadline. The bytes read are kept: the listener relays them to the backend first,
//! so the backend sees the stream unchanged.
//!
//! Must not decide anything of the bytes itself.

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// What a parser makes of the bytes read so far.
#[derive(Debug)]
pub enum Verdict<T> {
    /// Read more.
    NeedMore,
    /// Decided.
    Done(T),
    /// Not what was expected: why.
    Malformed(String),
}

/// Why no verdict came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeekError {
    /// The parser refused the bytes, or they grew past the bound.
    Malformed(String),
    /// The deadline passed first.
    Timeout,
    /// The device closed, or its socket failed, first.
    Closed,
}

/// Reads from `device` until `parse` decides, at most `max` bytes and until
/// `deadline`; answers the verdict and every byte read.
pub async fn read_until<R, T>(
    device: &mut R,
    max: usize,
    deadline: Instant,
    parse: impl Fn(&[u8]) -> Verdict<T>,
) -> Result<(T, Vec<u8>), PeekError>
where
    R: AsyncRead + Unpin,
{
    // Grown as bytes come, up to about `max`: most first packets (a ClientHello with
    // post-quantum key shares is about 2 KiB) fit in one read.
    let mut bytes = Vec::with_capacity(2048.min(max));
    loop {
        if bytes.len() >= max {
            return Err(PeekError::Malformed(format!(
                "more than {max} bytes without a complete first packet"
            )));
        }
        if bytes.len() == bytes.capacity() {
            bytes.reserve(bytes.len().max(2048).min(max - bytes.len()));
        }
        let read = tokio::time::timeout_at(deadline, device.read_buf(&mut bytes)).await;
        match read {
            Err(_) => return Err(PeekError::Timeout),
            Ok(Err(_) | Ok(0)) => return Err(PeekError::Closed),
            Ok(Ok(_)) => {}
        }
        // Every byte read is kept (the backend gets them all), even past `max`.
        match parse(&bytes) {
            Verdict::NeedMore => {}
            Verdict::Done(found) => return Ok((found, bytes)),
            Verdict::Malformed(why) => return Err(PeekError::Malformed(why)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    fn until_bang(bytes: &[u8]) -> Verdict<usize> {
        match bytes.iter().position(|&b| b == b'!') {
            Some(at) => Verdict::Done(at),
            None if bytes.contains(&b'?') => Verdict::Malformed("a question".into()),
            None => Verdict::NeedMore,
        }
    }

    #[tokio::test]
    async fn keeps_every_byte_across_reads_and_bounds_size_and_time() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let deadline = Instant::now() + Duration::from_secs(5);
        let reader = tokio::spawn(async move {
            let got = read_until(&mut server, 1024, deadline, until_bang).await;
            (got, server)
        });
        client.write_all(b"hello ").await.unwrap();
        client.write_all(b"world! and more").await.unwrap();
        let (got, _server) = reader.await.unwrap();
        let (at, bytes) = got.unwrap();
        assert_eq!(at, 11);
        assert!(bytes.starts_with(b"hello world!"), "{bytes:?}");

        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(&[b'x'; 2000]).await.unwrap();
        let got = read_until(&mut server, 1000, deadline, until_bang).await;
        assert!(matches!(got, Err(PeekError::Malformed(_))), "{got:?}");

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"what?").await.unwrap();
        let got = read_until(&mut server, 1000, deadline, until_bang).await;
        assert_eq!(got, Err(PeekError::Malformed("a question".into())));

        let (_client, mut server) = tokio::io::duplex(64);
        let soon = Instant::now() + Duration::from_millis(50);
        let got = read_until(&mut server, 1000, soon, until_bang).await;
        assert_eq!(got, Err(PeekError::Timeout));

        let (client, mut server) = tokio::io::duplex(64);
        drop(client);
        let got = read_until(&mut server, 1000, deadline, until_bang).await;
        assert_eq!(got, Err(PeekError::Closed));
    }
}
