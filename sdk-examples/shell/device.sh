#!/usr/bin/env bash
# Looks up the ranked servers with curl (Accept: text/plain: one host:port per line, best
# first), connects to the first that answers with bash's /dev/tcp (falling back to the
# next, and to the forwarder when the registry is unreachable or has no server), then
# sends a line every PING_SECS and checks its echo until the connection is lost.
#
#   ./device.sh
#
# Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
# SWITCHBOARD_FORWARDER (127.0.0.1:6665), PING_SECS (5).
# For an https:// registry: SWITCHBOARD_CA_CERT (PEM: trust only these CAs; else the
# system's roots), SWITCHBOARD_CLIENT_CERT and SWITCHBOARD_CLIENT_KEY (PEM: a client
# certificate, for a registry that asks for one).
set -uo pipefail
trap "" PIPE # a write to a closed connection fails instead of killing the script

REGISTRY=${SWITCHBOARD_SERVER:-http://127.0.0.1:8080}
SERVICE=${SWITCHBOARD_SERVICE:-default}
FORWARDER=${SWITCHBOARD_FORWARDER:-127.0.0.1:6665}
PING_SECS=${PING_SECS:-5}
# For an https:// registry, curl's TLS options: verify against SWITCHBOARD_CA_CERT (PEM)
# when set, else the system's roots; show SWITCHBOARD_CLIENT_CERT (and _KEY) when set.
TLS=()
case $REGISTRY in https://*)
  [ -z "${SWITCHBOARD_CA_CERT:-}" ] || TLS+=(--cacert "$SWITCHBOARD_CA_CERT")
  [ -z "${SWITCHBOARD_CLIENT_CERT:-}" ] ||
    TLS+=(--cert "$SWITCHBOARD_CLIENT_CERT" --key "${SWITCHBOARD_CLIENT_KEY:-$SWITCHBOARD_CLIENT_CERT}")
  ;;
esac

servers=$(curl -sSf -m 5 ${TLS[@]+"${TLS[@]}"} -H 'Accept: text/plain' "${REGISTRY%/}/servers?service=$SERVICE")
if [ -z "$servers" ]; then
  echo "no servers or registry unreachable; using the forwarder $FORWARDER"
  servers=$FORWARDER
else
  echo "servers" $servers
fi

for addr in $servers; do
  host=${addr%:*} port=${addr##*:}
  host=${host#[} host=${host%]}
  # bash's /dev/tcp has no connect timeout: probe under timeout(1) first.
  if timeout 2 bash -c ": </dev/tcp/$host/$port" 2>/dev/null && exec 3<>"/dev/tcp/$host/$port"; then
    echo "connected to $addr"
    n=0
    while :; do
      n=$((n + 1))
      printf 'ping %d\n' "$n" >&3
      read -r -t 5 line <&3 && [ "$line" = "ping $n" ] || break
      echo "echo ok"
      # Idle until the next ping; anything readable now means the server closed.
      read -r -t "$PING_SECS" line <&3
      [ $? -gt 128 ] || break
    done
    exec 3>&-
    echo "connection lost"
    exit 1
  fi
  echo "cannot connect to $addr"
done
exit 1
