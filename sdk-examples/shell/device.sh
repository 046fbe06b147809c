#!/usr/bin/env bash
# Looks up the ranked servers with curl (Accept: text/plain: one host:port per line, best
# first), connects with bash's /dev/tcp (the forwarder when the registry is unreachable or
# has no server), then sends a line every PING_SECS and checks its echo. It keeps the
# client reconnect contract (SPEC section 11), so that a dead server or a shed round does
# not become a reconnect storm:
#
# - An attempt: ask and connect to the first line; when it does not answer, ask again and
#   take the first line of the new answer not yet tried in this attempt (each answer
#   counts a hand-out for its first server only), up to the first answer's length.
# - After a lost connection: wait a random 0..reconnect_jitter_ms (the
#   X-Reconnect-Jitter-Ms header of the last answer; 5000 before any).
# - After a failed attempt: wait a random 0..min(120 s, 1 s * 2^n) (full-jitter
#   exponential backoff), n failed attempts so far; n is reset by a connection that
#   lasted 60 s.
#
#   ./device.sh
#
# Env: SWITCHBOARD_SERVER (http://127.0.0.1:8080), SWITCHBOARD_SERVICE (default),
# SWITCHBOARD_FORWARDER (127.0.0.1:6665), PING_SECS (5), SWITCHBOARD_TIME_SCALE (1: a
# positive integer that divides the contract's waits and its 60 s, for tests; the printed
# waits are before the division).
# For an https:// registry: SWITCHBOARD_CA_CERT (PEM: trust only these CAs; else the
# system's roots), SWITCHBOARD_CLIENT_CERT and SWITCHBOARD_CLIENT_KEY (PEM: a client
# certificate, for a registry that asks for one).
set -uo pipefail
trap "" PIPE # a write to a closed connection fails instead of killing the script

REGISTRY=${SWITCHBOARD_SERVER:-http://127.0.0.1:8080}
SERVICE=${SWITCHBOARD_SERVICE:-default}
FORWARDER=${SWITCHBOARD_FORWARDER:-127.0.0.1:6665}
PING_SECS=${PING_SECS:-5}
# The reconnect contract's numbers (SPEC section 11), in milliseconds.
DEFAULT_JITTER_MS=5000 BACKOFF_BASE_MS=1000 BACKOFF_CAP_MS=120000 RESET_AFTER_MS=60000
# Every contract wait is divided by it (1 in production).
TIME_SCALE=${SWITCHBOARD_TIME_SCALE:-1}
case $TIME_SCALE in '' | *[!0-9]*) TIME_SCALE=0 ;; esac
if ((10#$TIME_SCALE < 1)); then
  echo "SWITCHBOARD_TIME_SCALE=${SWITCHBOARD_TIME_SCALE:-}: not a positive integer" >&2
  exit 2
fi
TIME_SCALE=$((10#$TIME_SCALE))
# For an https:// registry, curl's TLS options: verify against SWITCHBOARD_CA_CERT (PEM)
# when set, else the system's roots; show SWITCHBOARD_CLIENT_CERT (and _KEY) when set.
TLS=()
case $REGISTRY in https://*)
  [ -z "${SWITCHBOARD_CA_CERT:-}" ] || TLS+=(--cacert "$SWITCHBOARD_CA_CERT")
  [ -z "${SWITCHBOARD_CLIENT_CERT:-}" ] ||
    TLS+=(--cert "$SWITCHBOARD_CLIENT_CERT" --key "${SWITCHBOARD_CLIENT_KEY:-$SWITCHBOARD_CLIENT_CERT}")
  ;;
esac

jitter_ms=$DEFAULT_JITTER_MS # X-Reconnect-Jitter-Ms of the last answer

# A uniform random number in 0..$1-1 in REPLY (30 bits from two $RANDOM).
random_below() {
  REPLY=$((((RANDOM << 15) | RANDOM) % $1))
}

# Sleeps a contract wait of $1 milliseconds (divided by the time scale).
pause() {
  local us=$(($1 * 1000 / TIME_SCALE))
  sleep "$(printf '%d.%06d' $((us / 1000000)) $((us % 1000000)))"
}

# Milliseconds now, in REPLY (bash 5's EPOCHREALTIME, else date).
now_ms() {
  local t=${EPOCHREALTIME:-}
  if [ -n "$t" ]; then
    t=${t/[.,]/}
    REPLY=$((10#$t / 1000))
  else
    REPLY=$(date +%s%3N)
  fi
}

# One GET /servers: the ranked addresses in `servers` (printed), and `jitter_ms`; status
# 1 and `why` when there are none.
ask() {
  local answer line value
  # The headers and the body on stdout; "." keeps the body's last newlines.
  if ! answer=$(curl -sSf -m 5 ${TLS[@]+"${TLS[@]}"} -D - -H 'Accept: text/plain' \
    "${REGISTRY%/}/servers?service=$SERVICE" && echo .); then
    why="registry unreachable"
    return 1
  fi
  answer=${answer%.}
  jitter_ms=$DEFAULT_JITTER_MS
  while IFS= read -r line; do
    line=${line%$'\r'}
    case ${line,,} in x-reconnect-jitter-ms:*)
      value=${line#*:} value=${value//[!0-9]/}
      [ -z "$value" ] || jitter_ms=$((10#$value))
      ;;
    esac
  done <<<"${answer%%$'\r\n\r\n'*}"
  servers=()
  read -r -d '' -a servers <<<"${answer#*$'\r\n\r\n'}"
  if [ ${#servers[@]} -eq 0 ]; then
    why="no servers"
    return 1
  fi
  echo "servers ${servers[*]}"
}

# Opens fd 3 to host:port $1; status 1 when it does not answer.
dial() {
  local host=${1%:*} port=${1##*:}
  host=${host#[} host=${host%]}
  # bash's /dev/tcp has no connect timeout: probe under timeout(1) first.
  timeout 2 bash -c ": </dev/tcp/$host/$port" 2>/dev/null && exec 3<>"/dev/tcp/$host/$port"
} 2>/dev/null

# One attempt of the contract: status 0 with fd 3 connected to `address`, 1 when no
# server answered.
attempt() {
  local list tried=() n picks pick candidate seen
  if ask; then
    list=("${servers[@]}")
  else
    echo "$why; using the forwarder $FORWARDER"
    list=("$FORWARDER")
  fi
  picks=${#list[@]}
  for ((n = 0; n < picks; n++)); do
    if ((n > 0)); then
      if ask; then
        list=("${servers[@]}")
      else
        echo "$why; trying the rest of the last list"
      fi
    fi
    pick=
    for candidate in "${list[@]}"; do
      for seen in "${tried[@]}"; do
        [ "$seen" != "$candidate" ] || continue 2
      done
      pick=$candidate
      break
    done
    [ -n "$pick" ] || return 1
    tried+=("$pick")
    if dial "$pick"; then
      echo "connected to $pick"
      address=$pick
      return 0
    fi
    echo "cannot connect to $pick"
  done
  return 1
}

# Pings on fd 3 until the connection is lost (bash's own words for a reset connection
# are not printed: "connection lost" says it).
session() {
  local n=0 line
  while :; do
    n=$((n + 1))
    printf 'ping %d\n' "$n" >&3
    read -r -t 5 line <&3 && [ "$line" = "ping $n" ] || return
    echo "echo ok"
    # Idle until the next ping; anything readable now means the server closed.
    read -r -t "$PING_SECS" line <&3
    [ $? -gt 128 ] || return
  done
} 2>/dev/null

failures=0 # failed attempts since the last connection that lasted RESET_AFTER_MS
while :; do
  if ! attempt; then
    cap=$((BACKOFF_BASE_MS << (failures < 7 ? failures : 7)))
    ((cap <= BACKOFF_CAP_MS)) || cap=$BACKOFF_CAP_MS
    ((failures >= 64)) || failures=$((failures + 1))
    random_below "$cap"
    echo "backing off $REPLY ms (up to $cap ms)"
    pause "$REPLY"
    continue
  fi
  now_ms
  since=$REPLY
  session
  exec 3>&-
  echo "connection lost"
  now_ms
  (((REPLY - since) * TIME_SCALE < RESET_AFTER_MS)) || failures=0
  random_below $((jitter_ms > 0 ? jitter_ms : 1))
  echo "reconnecting in $REPLY ms"
  pause "$REPLY"
done
