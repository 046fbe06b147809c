#!/usr/bin/env bash
# Registers a backend that cannot register itself (any TCP server on PORT) with
# Switchboard, heartbeats its live connection count (established sockets on that port,
# from ss) every heartbeat_secs, registers again when the registry forgot it (404), and
# deregisters on SIGTERM or Ctrl-C. Uses curl, and jq only when present (else sed).
#
#   ./sidecar.sh [PORT]
#
# Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
# PORT (6666), ADVERTISE_HOST (127.0.0.1), TTL_SECS (15),
# COUNT_CMD (how to count connections; default: ss on PORT),
# SHED_CMD (run with N when the registry asks to shed N connections), JQ (path, or empty for sed).
# For an https:// registry: SWITCHBOARD_CA_CERT (PEM: trust only these CAs; else the
# system's roots), SWITCHBOARD_CLIENT_CERT and SWITCHBOARD_CLIENT_KEY (PEM: a client
# certificate, for a registry that asks for one).
set -euo pipefail

REGISTRY=${SWITCHBOARD_SERVER:-http://127.0.0.1:8080}
REGISTRY=${REGISTRY%/}
SERVICE=${SWITCHBOARD_SERVICE:-default}
PORT=${1:-${PORT:-6666}}
HOST=${ADVERTISE_HOST:-127.0.0.1}
TTL=${TTL_SECS:-15}
COUNT_CMD=${COUNT_CMD:-"ss -Htn state established '( sport = :$PORT )' | wc -l"}
JQ=${JQ-$(command -v jq || true)}
INSTANCES="$REGISTRY/v1/services/$SERVICE/instances"
ID= LEASE= EVERY=
# For an https:// registry, curl's TLS options: verify against SWITCHBOARD_CA_CERT (PEM)
# when set, else the system's roots; show SWITCHBOARD_CLIENT_CERT (and _KEY) when set.
TLS=()
case $REGISTRY in https://*)
  [ -z "${SWITCHBOARD_CA_CERT:-}" ] || TLS+=(--cacert "$SWITCHBOARD_CA_CERT")
  [ -z "${SWITCHBOARD_CLIENT_CERT:-}" ] ||
    TLS+=(--cert "$SWITCHBOARD_CLIENT_CERT" --key "${SWITCHBOARD_CLIENT_KEY:-$SWITCHBOARD_CLIENT_CERT}")
  ;;
esac

# field NAME: a top-level string or number field of the JSON on stdin.
field() {
  if [ -n "$JQ" ]; then
    "$JQ" -r --arg f "$1" '.[$f] // empty'
  else
    sed -n 's/.*"'"$1"'":"\{0,1\}\([^",}]*\).*/\1/p'
  fi
}

# call METHOD URL [JSON]: prints the answer's body, a newline, and its status (000 if unreachable).
call() {
  curl -sS -m 5 ${TLS[@]+"${TLS[@]}"} -X "$1" -H 'Content-Type: application/json' ${LEASE:+-H "X-Lease: $LEASE"} \
    ${3:+--data "$3"} -w '\n%{http_code}' "$2" 2>/dev/null || true
}

register() {
  local out
  LEASE=
  while :; do
    out=$(call POST "$INSTANCES" "{\"address\":\"$HOST:$PORT\",\"ttl_secs\":$TTL}")
    case ${out##*$'\n'} in
      200 | 201) break ;;
      000) echo "registry unreachable" ;;
      *) echo "register answered ${out##*$'\n'}" ;;
    esac
    sleep 2 & wait $!
  done
  out=${out%$'\n'*}
  ID=$(field id <<<"$out") LEASE=$(field lease <<<"$out") EVERY=$(field heartbeat_secs <<<"$out")
  echo "registered id=$ID heartbeat_secs=$EVERY"
}

deregister() {
  kill "$!" 2>/dev/null || true # the heartbeat sleep, if it still runs
  if [ -n "$ID" ]; then
    local status
    status=$(call DELETE "$INSTANCES/$ID" | tail -n 1)
    if [ "$status" = 204 ]; then echo "deregistered id=$ID"; else echo "deregister answered $status"; fi
  fi
  exit 0
}
trap deregister TERM INT

register
while :; do
  sleep "$EVERY" & wait $! # in the background, so that the trap runs at once
  count=$(eval "$COUNT_CMD")
  out=$(call PUT "$INSTANCES/$ID/heartbeat" "{\"connections\":$count}")
  case ${out##*$'\n'} in
    200)
      shed=$(field shed <<<"${out%$'\n'*}")
      echo "heartbeat connections=$count shed=$shed"
      if [ "${shed:-0}" -gt 0 ] && [ -n "${SHED_CMD:-}" ]; then $SHED_CMD "$shed"; fi
      ;;
    404) echo "unknown instance; registering again" && register ;;
    000) echo "heartbeat failed: registry unreachable" ;;
    *) echo "heartbeat answered ${out##*$'\n'}" ;;
  esac
done
