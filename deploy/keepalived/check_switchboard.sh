#!/usr/bin/env bash
# Health check for keepalived's vrrp_script (deploy/keepalived/keepalived.conf).
#
# Exits 0 only when this node can serve legacy devices:
#   1. its HTTP API answers GET /readyz with 200, or with 503 `store_unavailable`
#      (PostgreSQL is unreachable from this node, but the node still forwards with
#      its last known fleet view: giving up the VIP then would make a database
#      outage an outage of every legacy device); and
#   2. its forward listener accepts a TCP connection.
# Anything else (refused, timed out, another 503 such as a node shutting down, curl
# missing) exits 1, and keepalived counts one failure.
#
# Usage: check_switchboard.sh [HTTP_ADDR [FORWARD_ADDR]]
#   HTTP_ADDR     host:port of the HTTP API      (or $SWITCHBOARD_HTTP,    default 127.0.0.1:8080)
#   FORWARD_ADDR  host:port of the forward port  (or $SWITCHBOARD_FORWARD, default 127.0.0.1:6665)
#   $SWITCHBOARD_CHECK_TIMEOUT  seconds to connect, per probe (default 1)
#   $SWITCHBOARD_CHECK_HTTP_TIMEOUT  seconds for the whole /readyz answer (default 2.5:
#                 with its store unreachable a node takes up to 2 s to say so). Keep
#                 this plus the forward probe's timeout below the vrrp_script's `timeout`.
#   $SWITCHBOARD_CHECK_STORE=required  fail when the store is unreachable too (a node
#                 cut off from PostgreSQL then gives the VIP up, even if none is left).
# An IPv6 address goes in brackets: [::1]:8080.
#
# Needs bash (for /dev/tcp), curl and timeout(1) (coreutils). The forward probe
# connects and closes at once: the forwarder sees a device that connects and leaves
# (it may open a backend connection for it; nothing is relayed).

http=${1:-${SWITCHBOARD_HTTP:-127.0.0.1:8080}}
forward=${2:-${SWITCHBOARD_FORWARD:-127.0.0.1:6665}}
t=${SWITCHBOARD_CHECK_TIMEOUT:-1}
ht=${SWITCHBOARD_CHECK_HTTP_TIMEOUT:-2.5}

body=$(curl -s -w '\n%{http_code}' --connect-timeout "$t" --max-time "$ht" \
    "http://$http/readyz") || body=$'\n000'
code=${body##*$'\n'}
case "$code" in
200) ;;
503)
    if [[ $body == *'"store_unavailable"'* && ${SWITCHBOARD_CHECK_STORE:-} != required ]]; then
        echo "check_switchboard: $http cannot reach its store; still forwarding with its last fleet view" >&2
    else
        echo "check_switchboard: GET http://$http/readyz answered 503: ${body%$'\n'*}" >&2
        exit 1
    fi
    ;;
*)
    echo "check_switchboard: GET http://$http/readyz answered $code" >&2
    exit 1
    ;;
esac

host=${forward%:*}
port=${forward##*:}
host=${host#[}
host=${host%]}
# timeout(1) bounds a connect to a host that drops SYNs.
if timeout "$t" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port" 2>/dev/null; then
    exit 0
fi
echo "check_switchboard: forward listener $forward accepts no connection" >&2
exit 1
