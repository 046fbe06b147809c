#!/usr/bin/env bash
# Health check for keepalived's vrrp_script (deploy/keepalived/keepalived.conf).
#
# Exits 0 only when this node can serve legacy devices:
#   1. its HTTP API answers GET /readyz with 200 (the process is up and its
#      PostgreSQL store answers), and
#   2. its forward listener accepts a TCP connection.
# Anything else (refused, timed out, 503, curl missing) exits 1, and keepalived
# counts one failure.
#
# Usage: check_switchboard.sh [HTTP_ADDR [FORWARD_ADDR]]
#   HTTP_ADDR     host:port of the HTTP API      (or $SWITCHBOARD_HTTP,    default 127.0.0.1:8080)
#   FORWARD_ADDR  host:port of the forward port  (or $SWITCHBOARD_FORWARD, default 127.0.0.1:6665)
#   $SWITCHBOARD_CHECK_TIMEOUT  seconds per probe (default 1); keep the sum of both
#                 probes below the vrrp_script's `timeout`.
# An IPv6 address goes in brackets: [::1]:8080.
#
# Needs bash (for /dev/tcp), curl and timeout(1) (coreutils). The forward probe
# connects and closes at once: the forwarder sees a device that connects and leaves
# (it may open a backend connection for it; nothing is relayed).

http=${1:-${SWITCHBOARD_HTTP:-127.0.0.1:8080}}
forward=${2:-${SWITCHBOARD_FORWARD:-127.0.0.1:6665}}
t=${SWITCHBOARD_CHECK_TIMEOUT:-1}

code=$(curl -s -o /dev/null -w '%{http_code}' --connect-timeout "$t" --max-time "$t" \
    "http://$http/readyz") || code=000
if [ "$code" != 200 ]; then
    echo "check_switchboard: GET http://$http/readyz answered $code" >&2
    exit 1
fi

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
