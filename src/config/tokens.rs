//! `[tokens]` and the `SWITCHBOARD_*_TOKEN` environment variables (SPEC 6), merged
//! into [`TokenConfig`]: the environment wins over the file.
//!
//! Must not check requests' tokens (`api::auth` does) or print a token anywhere.

use super::error::{ConfigError, invalid};
use super::file::{FileTokens, OneOrMany};

/// The tokens of SPEC section 6, as configured (plain data; `api::auth` builds its
/// checker from them). `Debug` says which are set, never what they are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenConfig {
    /// Admin endpoints, and drain/deregister without a lease. Also valid everywhere.
    pub admin: Option<String>,
    /// Registration; any of these.
    pub register: Vec<String>,
    /// `GET /servers`.
    pub read: Option<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |t: &Option<String>| if t.is_some() { "<set>" } else { "<unset>" };
        f.debug_struct("TokenConfig")
            .field("admin", &set(&self.admin))
            .field("register", &format_args!("<{} set>", self.register.len()))
            .field("read", &set(&self.read))
            .finish()
    }
}

/// Reads a token from the environment; empty means unset.
pub(super) fn env_token(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `[tokens]` under the environment (`env` looks a variable up); none may be empty.
pub(super) fn merge(
    file: Option<FileTokens>,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<TokenConfig, ConfigError> {
    let file_tokens = file.unwrap_or_default();
    let register = match env("SWITCHBOARD_REGISTER_TOKEN") {
        Some(t) => vec![t],
        None => match file_tokens.register {
            None => Vec::new(),
            Some(OneOrMany::One(t)) => vec![t],
            Some(OneOrMany::Many(ts)) => ts,
        },
    };
    let tokens = TokenConfig {
        admin: env("SWITCHBOARD_ADMIN_TOKEN").or(file_tokens.admin),
        register,
        read: env("SWITCHBOARD_READ_TOKEN").or(file_tokens.read),
    };
    for (key, token) in [
        ("tokens.admin", &tokens.admin),
        ("tokens.read", &tokens.read),
    ] {
        if token.as_ref().is_some_and(|t| t.trim().is_empty()) {
            return Err(invalid(key, "token must not be empty"));
        }
    }
    if tokens.register.iter().any(|t| t.trim().is_empty()) {
        return Err(invalid("tokens.register", "token must not be empty"));
    }
    Ok(tokens)
}
