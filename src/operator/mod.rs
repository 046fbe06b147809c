//! The operator commands of SPEC section 7 (`services`, `instances`, `drain`,
//! `deregister`): a client of the server's own HTTP admin API that prints aligned
//! tables (or the server's JSON), and the one-line errors and exit codes they end with.
//!
//! Owns: [`client`] (the HTTP calls, each under a connect and a total timeout),
//! [`table`] (pure rendering of the answers) and [`run`], which ties them together and
//! returns the text to print. Must not touch the registry, the store or the server's
//! handlers: it knows the server only through HTTP, as any other client would.

pub mod client;
pub mod table;

use serde_json::json;

use self::client::Client;

/// Where the commands look for the server without `--server` or `SWITCHBOARD_SERVER`.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Exit code: the server refused the request (4xx/5xx) or answered something that is
/// not Switchboard's API.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code: a usage error (a bad flag, as clap reports, or a bad `--server` URL).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the server could not be reached or did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 3;

/// The text `--help` shows about exit codes.
pub const EXIT_CODES_HELP: &str = "\
Exit codes (operator commands):
  0  done
  1  the server refused: 400 bad input, 401 wrong or missing token, 404 unknown
     instance, 5xx; or its answer is not Switchboard's API
  2  usage error: a bad flag or a bad --server URL
  3  the server is unreachable or did not answer within the timeout";

/// One operator command, with its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `GET /v1/services`.
    Services,
    /// `GET /v1/services/{service}/instances`.
    Instances {
        /// The service to list.
        service: String,
    },
    /// `POST /v1/services/{service}/instances/{id}/drain`.
    Drain {
        /// The instance's service.
        service: String,
        /// The instance's id.
        id: String,
        /// Paced evacuation rate, connections per second (the server checks its range).
        evacuate_per_sec: Option<u64>,
    },
    /// `DELETE /v1/services/{service}/instances/{id}`.
    Deregister {
        /// The instance's service.
        service: String,
        /// The instance's id.
        id: String,
    },
}

/// Why an operator command failed. Each message is one line that names the cause.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// `--server` (or `SWITCHBOARD_SERVER`) is not a usable URL.
    #[error("invalid --server URL {url:?} (from --server or SWITCHBOARD_SERVER): {reason}")]
    BadServerUrl {
        /// What was given.
        url: String,
        /// Why it cannot be used.
        reason: String,
    },
    /// `--ca-cert`, `--client-cert` or `--client-key` cannot be used.
    #[error("invalid TLS files (--ca-cert, --client-cert, --client-key): {reason}")]
    BadTlsFiles {
        /// Which file and why.
        reason: String,
    },
    /// Nothing answered at the server's address.
    #[error("cannot reach the server at {url}: {cause}")]
    Unreachable {
        /// The server's base URL.
        url: String,
        /// The innermost cause (e.g. `Connection refused`).
        cause: String,
    },
    /// The server did not answer within the timeout.
    #[error("the server at {url} did not answer within {secs} s")]
    Timeout {
        /// The server's base URL.
        url: String,
        /// The timeout that passed.
        secs: u64,
    },
    /// The server refused with an error answer in the API's shape.
    #[error("{status} {code}: {message}{}", hint(*.status))]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error's stable code (`unauthorized`, `unknown_instance`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The answer is not what Switchboard's API answers (wrong port, a proxy page...).
    #[error("the server at {url} answered {status} with {detail}; is it a Switchboard server?")]
    Unexpected {
        /// The server's base URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// What was wrong with the body.
        detail: String,
    },
}

/// What the operator can do about some refusals, appended to their message.
fn hint(status: u16) -> &'static str {
    match status {
        401 => " (give the admin token with --token or SWITCHBOARD_ADMIN_TOKEN)",
        _ => "",
    }
}

impl OperatorError {
    /// The process exit code for this error (see [`EXIT_CODES_HELP`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            OperatorError::BadServerUrl { .. } | OperatorError::BadTlsFiles { .. } => EXIT_USAGE,
            OperatorError::Unreachable { .. } | OperatorError::Timeout { .. } => EXIT_UNREACHABLE,
            OperatorError::Refused { .. } | OperatorError::Unexpected { .. } => EXIT_REFUSED,
        }
    }
}

/// Runs one command against `server` and returns what to print on stdout: aligned
/// tables, or with `json` the server's JSON, indented, its fields in the server's
/// order (for `deregister`, which answers no body, `{"service", "id", "deregistered":
/// true}`).
///
/// `token` is sent as `Authorization: Bearer <token>` when given.
///
/// # Errors
/// A bad `server` URL, an unreachable or slow server, a refusal by the server, or an
/// answer that is not Switchboard's API; see [`OperatorError`].
pub async fn run(
    op: &Operation,
    server: &str,
    token: Option<&str>,
    tls: &crate::tls::client::ClientFiles,
    json: bool,
) -> Result<String, OperatorError> {
    let client = Client::new(server, token, tls)?;
    let text = match op {
        Operation::Services => {
            let answer = client.services().await?;
            if json {
                indent(&answer)
            } else {
                let parsed = client.decode::<table::ServicesAnswer>(&answer)?;
                table::services(&parsed.services)
            }
        }
        Operation::Instances { service } => {
            let answer = client.instances(service).await?;
            if json {
                indent(&answer)
            } else {
                let parsed = client.decode::<table::InstancesAnswer>(&answer)?;
                table::instances(&parsed.instances)
            }
        }
        Operation::Drain {
            service,
            id,
            evacuate_per_sec,
        } => {
            let answer = client.drain(service, id, *evacuate_per_sec).await?;
            if json {
                indent(&answer)
            } else {
                let instance = client.decode::<table::InstanceRow>(&answer)?;
                table::drained(service, &instance, *evacuate_per_sec)
            }
        }
        Operation::Deregister { service, id } => {
            client.deregister(service, id).await?;
            if json {
                indent(&json!({"service": service, "id": id, "deregistered": true}).to_string())
            } else {
                format!("deregistered {id} from service {service}\n")
            }
        }
    };
    Ok(text)
}

/// Indents JSON text two spaces a level, keeping its fields in their order (a
/// `serde_json::Value` would sort them). `text` is valid JSON: the client checked.
fn indent(text: &str) -> String {
    fn newline(out: &mut String, depth: usize) {
        out.push('\n');
        out.extend(std::iter::repeat_n("  ", depth));
    }
    let mut out = String::with_capacity(text.len() * 2);
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => {
                in_string = true;
                out.push(c);
            }
            '{' | '[' => {
                out.push(c);
                while chars.peek().is_some_and(|n| n.is_ascii_whitespace()) {
                    chars.next();
                }
                if let Some(&close @ ('}' | ']')) = chars.peek() {
                    // An empty object or array stays on its line.
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    newline(&mut out, depth);
                }
            }
            '}' | ']' => {
                depth = depth.saturating_sub(1);
                newline(&mut out, depth);
                out.push(c);
            }
            ',' => {
                out.push(c);
                newline(&mut out, depth);
            }
            ':' => out.push_str(": "),
            c if c.is_ascii_whitespace() => {}
            c => out.push(c),
        }
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::indent;

    #[test]
    fn json_is_indented_in_its_own_order() {
        let text = r#"{"z":1,"a":[],"m":{"k":"a \"q\" {x}, [y]: z","e":{}},"l":[1,{"b":null}]}"#;
        let expected = r#"{
  "z": 1,
  "a": [],
  "m": {
    "k": "a \"q\" {x}, [y]: z",
    "e": {}
  },
  "l": [
    1,
    {
      "b": null
    }
  ]
}
"#;
        assert_eq!(indent(text), expected);
        let round: serde_json::Value = serde_json::from_str(&indent(text)).unwrap();
        assert_eq!(
            round,
            serde_json::from_str::<serde_json::Value>(text).unwrap()
        );
        assert_eq!(indent("{ }"), "{}\n");
    }
}
