//! The client's one error type.

/// Why a registry call or a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A registry URL could not be parsed, or no URL was given.
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS settings (`ca_pem`, `identity_pem`) cannot be used.
    #[error("invalid TLS settings: {0}")]
    Tls(String),
    /// No registry URL answered (connection refused, timeout, or a 5xx from every
    /// node). `last` is the last node's failure.
    #[error("no registry answered; last error: {last}")]
    Unreachable {
        /// The failure of the last node tried.
        last: String,
    },
    /// The registry refused the token (401).
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The instance is not known (404 `unknown_instance`): it expired and was removed,
    /// or the registry lost it; register again.
    #[error("unknown instance: {0}")]
    UnknownInstance(String),
    /// The lease does not match the instance (403 `bad_lease`).
    #[error("bad lease: {0}")]
    BadLease(String),
    /// Any other refusal, with the registry's error code and message (e.g. 400
    /// `invalid_address`).
    #[error("registry answered {status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The registry's stable error code.
        code: String,
        /// The registry's message.
        message: String,
    },
    /// The answer could not be read.
    #[error("unreadable registry answer: {0}")]
    Decode(String),
    /// No server of the list answered within the connect timeout (and there was no
    /// list to try: the registry was unreachable and nothing was cached).
    #[error("could not connect to any server: {0}")]
    Connect(String),
}

impl Error {
    /// Whether trying again later (or another registry node) may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::Connect(_))
    }
}

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
