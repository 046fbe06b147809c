//! `[[forward]]` and `--forward`/`--no-forward`: the forward listeners, validated into
//! [`ForwardConfig`]s (TCP or UDP, PROXY protocol, hashing, timeouts, keepalive).
//!
//! Must not bind sockets or know the other sections; whether two listeners collide is
//! `listeners.rs`'s.

use std::net::SocketAddr;
use std::time::Duration;

use super::edge::{self, EdgeConfig};
use super::error::{ConfigError, invalid};
use super::file::FileForward;
use crate::cli::ServeArgs;
use crate::registry::validate;

/// Default TCP keepalive idle time on relayed sockets (SPEC section 4).
pub const DEFAULT_TCP_KEEPALIVE_SECS: u64 = 60;
/// Default `idle_timeout_secs` of a UDP listener (SPEC 4).
pub const DEFAULT_UDP_IDLE_TIMEOUT_SECS: u64 = 20;
/// Largest `tcp_keepalive_secs`: the kernel's TCP_KEEPIDLE limit is 32767.
const MAX_TCP_KEEPALIVE_SECS: u64 = 32_767;

/// Default forward listener.
pub const DEFAULT_FORWARD: &str = "127.0.0.1:6665=default";

/// PROXY protocol version sent to backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// Text header.
    V1,
    /// Binary header.
    V2,
}

/// Transport of a forward listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardProtocol {
    /// Stream connections, relayed both ways.
    #[default]
    Tcp,
    /// Datagrams, in sessions per client address.
    Udp,
}

/// Affinity hashing of a forward listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardHash {
    /// Least load, no affinity.
    None,
    /// The device's IP address is the affinity key.
    RemoteAddr,
    /// The client identifier of the MQTT CONNECT packet is the affinity key (SPEC 9).
    MqttClientId,
}

/// One validated forward listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Service whose instances it forwards to. On an SNI-routing listener, the service
    /// of hellos that match no route; empty when those are refused.
    pub service: String,
    /// PROXY protocol header to send, if any.
    pub proxy_protocol: Option<ProxyProtocol>,
    /// Connections beyond this are closed at once.
    pub max_connections: Option<u64>,
    /// Backend connect timeout.
    pub connect_timeout: Duration,
    /// Close a relayed connection idle this long.
    pub idle_timeout: Option<Duration>,
    /// Failures within `fail_timeout` that take a backend out.
    pub max_fails: u32,
    /// Window and penalty of `max_fails`.
    pub fail_timeout: Duration,
    /// Affinity hashing.
    pub hash: ForwardHash,
    /// TCP keepalive idle time on both sockets of a relayed connection; `None` off.
    pub tcp_keepalive: Option<Duration>,
    /// TCP or UDP.
    pub protocol: ForwardProtocol,
    /// UDP: a session ends once this many datagrams came back (nginx's
    /// `proxy_responses`); `None` = no limit.
    pub udp_responses: Option<u64>,
    /// TLS termination, SNI routing and their deadline (SPEC 9).
    pub edge: EdgeConfig,
}

/// The forward listeners: none with `--no-forward`; the `--forward` flags, which
/// replace the file's; the file's `[[forward]]`; or the default one. Each comes with
/// the key its errors name (`--forward[0]`, `forward[0]`, or `forward` for the default).
pub(super) fn merge(
    file: Option<Vec<FileForward>>,
    args: &ServeArgs,
) -> Result<Vec<(String, ForwardConfig)>, ConfigError> {
    let keyed = |key: String, f: FileForward| Ok((key.clone(), validate_forward(&key, f)?));
    if args.no_forward {
        Ok(Vec::new())
    } else if !args.forward.is_empty() {
        args.forward
            .iter()
            .enumerate()
            .map(|(i, spec)| keyed(format!("--forward[{i}]"), parse_forward_flag(spec)?))
            .collect()
    } else if let Some(list) = file {
        list.into_iter()
            .enumerate()
            .map(|(i, f)| keyed(format!("forward[{i}]"), f))
            .collect()
    } else {
        Ok(vec![keyed(
            "forward".to_owned(),
            parse_forward_flag(DEFAULT_FORWARD)?,
        )?])
    }
}

fn parse_forward_flag(spec: &str) -> Result<FileForward, ConfigError> {
    let (listen, service) = spec.split_once('=').ok_or_else(|| {
        invalid(
            "--forward",
            format!("{spec:?}: expected LISTEN=SERVICE, e.g. 127.0.0.1:6665=default"),
        )
    })?;
    Ok(FileForward {
        listen: listen.to_owned(),
        service: Some(service.to_owned()),
        ..FileForward::default()
    })
}

fn validate_forward(key: &str, f: FileForward) -> Result<ForwardConfig, ConfigError> {
    let listen = f.listen.parse().map_err(|_| {
        invalid(
            format!("{key}.listen"),
            format!("{:?} is not an IP:port address", f.listen),
        )
    })?;
    // An SNI-routing listener without `service` refuses hellos no route matches.
    let service = match (&f.service, &f.sni_routes) {
        (Some(service), _) => service.clone(),
        (None, Some(_)) => String::new(),
        (None, None) => "default".to_owned(),
    };
    if !service.is_empty() {
        validate::service_name(&service)
            .map_err(|e| invalid(format!("{key}.service"), e.message))?;
    }
    let proxy_protocol = match f.proxy_protocol.as_deref() {
        None => None,
        Some("v1") => Some(ProxyProtocol::V1),
        Some("v2") => Some(ProxyProtocol::V2),
        Some(other) => {
            return Err(invalid(
                format!("{key}.proxy_protocol"),
                format!("{other:?}: expected \"v1\" or \"v2\""),
            ));
        }
    };
    let hash = match f.hash.as_deref() {
        None => ForwardHash::None,
        Some("remote_addr") => ForwardHash::RemoteAddr,
        Some("mqtt_client_id") => ForwardHash::MqttClientId,
        Some(other) => {
            return Err(invalid(
                format!("{key}.hash"),
                format!("{other:?}: expected \"remote_addr\" or \"mqtt_client_id\""),
            ));
        }
    };
    let positive = |name: &str, v: Option<u64>| -> Result<Option<u64>, ConfigError> {
        match v {
            Some(0) => Err(invalid(format!("{key}.{name}"), "must be at least 1")),
            other => Ok(other),
        }
    };
    let max_fails = f.max_fails.unwrap_or(3);
    if max_fails == 0 {
        return Err(invalid(format!("{key}.max_fails"), "must be at least 1"));
    }
    let protocol = match f.protocol.as_deref() {
        None | Some("tcp") => ForwardProtocol::Tcp,
        Some("udp") => ForwardProtocol::Udp,
        Some(other) => {
            return Err(invalid(
                format!("{key}.protocol"),
                format!("{other:?}: expected \"tcp\" or \"udp\""),
            ));
        }
    };
    if protocol == ForwardProtocol::Udp {
        // Keys that only mean something for a stream: refused rather than ignored.
        let stream_only = [
            ("proxy_protocol", f.proxy_protocol.is_some()),
            ("tcp_keepalive_secs", f.tcp_keepalive_secs.is_some()),
            ("connect_timeout_ms", f.connect_timeout_ms.is_some()),
        ];
        if let Some((name, _)) = stream_only.iter().find(|(_, set)| *set) {
            return Err(invalid(
                format!("{key}.{name}"),
                "not for protocol = \"udp\" (datagrams have no connection)",
            ));
        }
    } else if f.udp_responses.is_some() {
        return Err(invalid(
            format!("{key}.udp_responses"),
            "only for protocol = \"udp\"",
        ));
    }
    let edge = edge::validate(key, &f, protocol == ForwardProtocol::Udp)?;
    if hash == ForwardHash::MqttClientId
        && (protocol == ForwardProtocol::Udp || edge.sni_routes.is_some())
    {
        return Err(invalid(
            format!("{key}.hash"),
            "\"mqtt_client_id\" reads the MQTT CONNECT: a TCP listener, plain or \
             terminating TLS (not one that routes TLS by SNI)",
        ));
    }
    let idle_timeout = positive("idle_timeout_secs", f.idle_timeout_secs)?;
    // nginx's proxy_timeout for UDP is 10 min; SPEC 4 says 20 s, so sessions of
    // clients that never come back do not pile up.
    let idle_timeout = match protocol {
        ForwardProtocol::Udp => Some(idle_timeout.unwrap_or(DEFAULT_UDP_IDLE_TIMEOUT_SECS)),
        ForwardProtocol::Tcp => idle_timeout,
    };
    Ok(ForwardConfig {
        listen,
        service,
        proxy_protocol,
        max_connections: positive("max_connections", f.max_connections)?,
        connect_timeout: Duration::from_millis(
            positive("connect_timeout_ms", f.connect_timeout_ms)?.unwrap_or(1000),
        ),
        idle_timeout: idle_timeout.map(Duration::from_secs),
        max_fails,
        fail_timeout: Duration::from_secs(
            positive("fail_timeout_secs", f.fail_timeout_secs)?.unwrap_or(10),
        ),
        hash,
        // 0 turns it off; 7200 s is the kernel's own default idle time.
        tcp_keepalive: match f.tcp_keepalive_secs.unwrap_or(DEFAULT_TCP_KEEPALIVE_SECS) {
            0 => None,
            secs if secs <= MAX_TCP_KEEPALIVE_SECS => Some(Duration::from_secs(secs)),
            _ => {
                return Err(invalid(
                    format!("{key}.tcp_keepalive_secs"),
                    format!("must be within 0..={MAX_TCP_KEEPALIVE_SECS} (0 turns it off)"),
                ));
            }
        },
        protocol,
        udp_responses: f.udp_responses,
        edge,
    })
}

#[cfg(test)]
mod tests {
    use crate::cli::ServeArgs;
    use crate::config::Config;

    #[test]
    fn bad_values_are_named() {
        let err = Config::from_toml(
            "[[forward]]\nlisten = \"127.0.0.1:1\"\nproxy_protocol = \"v3\"",
            &ServeArgs::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("forward[0].proxy_protocol"),
            "{err}"
        );
    }
}
