//! The HTTP side of the operator commands: one request per command to the server's
//! admin API, each under a connect timeout and a total timeout, with the server's
//! answers and failures mapped onto [`OperatorError`]. Must not print anything.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// An answer's body: JSON text as the server sent it (empty for `204`).
pub type Body = String;

use super::OperatorError;

/// How long a TCP connect to the server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request (connect, send, answer) may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one server's admin API.
pub struct Client {
    http: reqwest::Client,
    base: Url,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The error body of the API: `{"error": {"code", "message"}}`.
#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorFields,
}

#[derive(Deserialize)]
struct ErrorFields {
    code: String,
    message: String,
}

impl Client {
    /// A client of the server at `server` (`http://host:port` or `https://host:port`,
    /// optionally with a path prefix; `host:port` alone means `http://host:port`),
    /// whose HTTPS trusts and presents what `tls` names. An empty `token` counts as
    /// none.
    ///
    /// # Errors
    /// [`OperatorError::BadServerUrl`] when `server` is not a usable URL,
    /// [`OperatorError::BadTlsFiles`] when a TLS file cannot be used.
    pub fn new(
        server: &str,
        token: Option<&str>,
        tls: &crate::tls::client::ClientFiles,
    ) -> Result<Client, OperatorError> {
        let base = parse_server(server)?;
        let http = crate::tls::client::reqwest_builder(tls)
            .map_err(|reason| OperatorError::BadTlsFiles { reason })?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            // The API never redirects; a redirect means something else answers there.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("switchboard-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|err| OperatorError::BadServerUrl {
                url: server.to_owned(),
                reason: format!("cannot build an HTTP client: {}", innermost(&err)),
            })?;
        Ok(Client {
            http,
            base,
            token: token.filter(|t| !t.is_empty()).map(str::to_owned),
        })
    }

    /// The server's base URL, as messages name it.
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// `GET /v1/services`.
    ///
    /// # Errors
    /// See [`OperatorError`].
    pub async fn services(&self) -> Result<Body, OperatorError> {
        let url = self.url(&["v1", "services"]);
        self.call(Method::GET, url, None).await
    }

    /// `GET /v1/services/{service}/instances`.
    ///
    /// # Errors
    /// See [`OperatorError`].
    pub async fn instances(&self, service: &str) -> Result<Body, OperatorError> {
        let url = self.url(&["v1", "services", service, "instances"]);
        self.call(Method::GET, url, None).await
    }

    /// `POST /v1/services/{service}/instances/{id}/drain`, with
    /// `{"evacuate_per_sec": R}` when a rate is given and no body otherwise.
    ///
    /// # Errors
    /// See [`OperatorError`].
    pub async fn drain(
        &self,
        service: &str,
        id: &str,
        evacuate_per_sec: Option<u64>,
    ) -> Result<Body, OperatorError> {
        let url = self.url(&["v1", "services", service, "instances", id, "drain"]);
        let body = evacuate_per_sec.map(|rate| json!({ "evacuate_per_sec": rate }));
        self.call(Method::POST, url, body).await
    }

    /// `DELETE /v1/services/{service}/instances/{id}`.
    ///
    /// # Errors
    /// See [`OperatorError`].
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), OperatorError> {
        let url = self.url(&["v1", "services", service, "instances", id]);
        self.call(Method::DELETE, url, None).await.map(drop)
    }

    /// Reads an answer into its typed form for the tables.
    ///
    /// # Errors
    /// [`OperatorError::Unexpected`] when the answer lacks what the tables need.
    pub fn decode<T: DeserializeOwned>(&self, answer: &str) -> Result<T, OperatorError> {
        serde_json::from_str(answer).map_err(|err| OperatorError::Unexpected {
            url: self.server().to_owned(),
            status: 200,
            detail: format!("an answer of an unexpected shape ({err})"),
        })
    }

    /// The base URL with `segments` appended, each percent-encoded as one segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("parse_server accepts only URLs that can be a base")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// Sends one request; the answer's JSON text, checked to be JSON (empty for an
    /// empty body, as 204 has).
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
    ) -> Result<Body, OperatorError> {
        let mut request = self.http.request(method, url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|err| self.transport(&err))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|err| self.transport(&err))?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Body::new());
            }
            return serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
                .ok()
                .and_then(|_| String::from_utf8(bytes.to_vec()).ok())
                .ok_or_else(|| OperatorError::Unexpected {
                    url: self.server().to_owned(),
                    status: status.as_u16(),
                    detail: "a body that is not JSON".to_owned(),
                });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(ErrorBody { error }) => Err(OperatorError::Refused {
                status: status.as_u16(),
                code: error.code,
                message: one_line(&error.message),
            }),
            Err(_) => Err(OperatorError::Unexpected {
                url: self.server().to_owned(),
                status: status.as_u16(),
                detail: describe_foreign(status, &bytes),
            }),
        }
    }

    /// A failure below HTTP: nothing listens, a timeout, a reset connection.
    fn transport(&self, err: &reqwest::Error) -> OperatorError {
        let url = self.server().to_owned();
        if err.is_timeout() {
            let secs = if err.is_connect() {
                CONNECT_TIMEOUT
            } else {
                REQUEST_TIMEOUT
            };
            OperatorError::Timeout {
                url,
                secs: secs.as_secs(),
            }
        } else {
            OperatorError::Unreachable {
                url,
                cause: innermost(err),
            }
        }
    }
}

/// Checks and normalizes a `--server` value.
fn parse_server(server: &str) -> Result<Url, OperatorError> {
    let bad = |reason: &str| OperatorError::BadServerUrl {
        url: server.to_owned(),
        reason: reason.to_owned(),
    };
    let trimmed = server.trim();
    if trimmed.is_empty() {
        return Err(bad("it is empty; expected http://HOST:PORT"));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_owned()
    } else {
        format!("http://{trimmed}")
    };
    let mut url = Url::parse(&with_scheme)
        .map_err(|err| bad(&format!("{err}; expected http://HOST:PORT")))?;
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(bad(&format!(
                "scheme {other:?}; expected http://HOST:PORT or https://HOST:PORT"
            )));
        }
    }
    if url.host_str().is_none_or(str::is_empty) || url.cannot_be_a_base() {
        return Err(bad("no host; expected http://HOST:PORT"));
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The innermost cause of an error (e.g. `Connection refused (os error 111)`), which
/// is the part that names what went wrong.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    // Bounded: error chains are short, and 16 links is more than any real one.
    for _ in 0..16 {
        match cause.source() {
            Some(next) => cause = next,
            None => break,
        }
    }
    one_line(&cause.to_string())
}

/// Describes an error answer that is not in the API's shape.
fn describe_foreign(status: StatusCode, bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = one_line(text.trim());
    let reason = status.canonical_reason().unwrap_or("");
    if text.is_empty() {
        format!("no error body ({} {reason})", status.as_u16())
    } else {
        let short: String = text.chars().take(120).collect();
        format!("a body that is not Switchboard's error shape: {short:?}")
    }
}

/// Text folded onto one line, so that each error stays one line on stderr.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_normalized() {
        let url = |s: &str| parse_server(s).map(|u| u.to_string());
        assert_eq!(
            url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(url("127.0.0.1:9000").unwrap(), "http://127.0.0.1:9000/");
        assert_eq!(url("localhost:9000").unwrap(), "http://localhost:9000/");
        assert_eq!(
            url("http://[::1]:8080/sb/").unwrap(),
            "http://[::1]:8080/sb/"
        );
        assert_eq!(url("https://x:8443").unwrap(), "https://x:8443/");
        for bad in [
            "",
            "  ",
            "ftp://x",
            "http://",
            "http://a b:1",
            "http://x:99999",
        ] {
            let err = url(bad).unwrap_err();
            assert!(
                matches!(err, OperatorError::BadServerUrl { .. }),
                "{bad:?}: {err}"
            );
            assert_eq!(err.exit_code(), super::super::EXIT_USAGE);
        }
    }

    #[test]
    fn paths_are_encoded_one_segment_each() {
        let client = Client::new("http://127.0.0.1:1/prefix/", None, &Default::default()).unwrap();
        let url = client.url(&["v1", "services", "a b/c", "instances"]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/prefix/v1/services/a%20b%2Fc/instances"
        );
        let client = Client::new("http://127.0.0.1:1", Some(""), &Default::default()).unwrap();
        assert_eq!(client.url(&["v1"]).as_str(), "http://127.0.0.1:1/v1");
        assert!(client.token.is_none(), "an empty token is none");
        assert!(!format!("{client:?}").contains("prefix"));
    }

    #[test]
    fn the_token_stays_out_of_debug() {
        let client =
            Client::new("http://127.0.0.1:1", Some("s3cret"), &Default::default()).unwrap();
        assert!(!format!("{client:?}").contains("s3cret"));
    }

    #[test]
    fn foreign_error_bodies_are_described_on_one_line() {
        let d = describe_foreign(StatusCode::BAD_GATEWAY, b"<html>\n<b>bad</b>\n</html>");
        assert!(!d.contains('\n'), "{d}");
        assert!(d.contains("<html> <b>bad</b> </html>"), "{d}");
        let d = describe_foreign(StatusCode::BAD_GATEWAY, b"");
        assert_eq!(d, "no error body (502 Bad Gateway)");
    }
}
