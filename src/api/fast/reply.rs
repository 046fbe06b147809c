//! Writes an [`Answer`] as hyper writes a response: its status line (HTTP/1.0 to an
//! HTTP/1.0 request), lowercase header names in the handler's order, then
//! `content-length`, the `connection` header hyper adds, and a `date` formatted once
//! per second.
//!
//! Pure but for the clock; owns only the encoding.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::StatusCode;

use crate::api::answer::Answer;

/// How the answer ends the exchange.
#[derive(Debug, Clone, Copy)]
pub struct Framing {
    /// Answer as HTTP/1.0.
    pub http10: bool,
    /// The connection stays open after this answer.
    pub keep_alive: bool,
}

/// Appends `answer` to `out`.
pub fn write(out: &mut Vec<u8>, answer: &Answer, framing: Framing) {
    out.reserve(160 + answer.body.len());
    if !framing.http10 && answer.status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(if framing.http10 {
            b"HTTP/1.0 "
        } else {
            b"HTTP/1.1 "
        });
        out.extend_from_slice(answer.status.as_str().as_bytes());
        out.push(b' ');
        let reason = answer.status.canonical_reason().unwrap_or("<none>");
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(content_type) = answer.content_type {
        out.extend_from_slice(b"content-type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &answer.extra {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // axum sets the length among the handler's headers (a body-less answer made
    // outside the router gets it from hyper, after `connection`).
    let routed = answer.content_type.is_some();
    if routed {
        content_length(out, answer.body.len());
    }
    // hyper's `enforce_version`: HTTP/1.1 says `close` when it closes; HTTP/1.0 says
    // `keep-alive` when it stays open.
    match (framing.http10, framing.keep_alive) {
        (false, false) => out.extend_from_slice(b"connection: close\r\n"),
        (true, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
        _ => {}
    }
    if !routed {
        content_length(out, answer.body.len());
    }
    out.extend_from_slice(b"date: ");
    DATE.with_borrow_mut(|date| out.extend_from_slice(date.now()));
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&answer.body);
}

fn content_length(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) and the second it is of.
struct CachedDate {
    second: u64,
    text: Vec<u8>,
}

impl CachedDate {
    /// The date of now, formatted again only when the second changed.
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}

thread_local! {
    /// Per thread, as hyper keeps its own: no lock on the way.
    static DATE: RefCell<CachedDate> = const {
        RefCell::new(CachedDate { second: 0, text: Vec::new() })
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(answer: &Answer, http10: bool, keep_alive: bool) -> String {
        let mut out = Vec::new();
        write(&mut out, answer, Framing { http10, keep_alive });
        let text = String::from_utf8(out).unwrap();
        // The date moves; its shape is checked once.
        let at = text.find("date: ").unwrap();
        let date = &text[at + 6..at + 6 + 29];
        assert!(date.ends_with(" GMT"), "{date}");
        text.replace(date, "<date>")
    }

    #[test]
    fn as_hyper_frames_them() {
        let ok = Answer::json(StatusCode::OK, &b"{}"[..]);
        assert_eq!(
            text(&ok, false, true),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\ndate: <date>\r\n\r\n{}"
        );
        assert_eq!(
            text(&ok, false, false),
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\ndate: <date>\r\n\r\n{}"
        );
        assert_eq!(
            text(&ok, true, true),
            "HTTP/1.0 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: keep-alive\r\ndate: <date>\r\n\r\n{}"
        );
        let gone = Answer::json(StatusCode::NOT_FOUND, &b"{}"[..]);
        assert!(text(&gone, true, false).starts_with("HTTP/1.0 404 Not Found\r\n"));
        let late = Answer::empty(StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            text(&late, false, false),
            "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\ndate: <date>\r\n\r\n"
        );
    }
}
