#!/usr/bin/env bash
# The relay end to end on this machine, against a stand-in for HighLevel (`make demo`).
#
# Starts the fake HighLevel (tests/fake_highlevel.py) on 127.0.0.1:$DEMO_HL_PORT, the web
# process (gunicorn, as in the Procfile) on 127.0.0.1:$DEMO_PORT and one forwarder, all on a
# fresh SQLite file (instance/demo.db); stores a token for `demo_location`, sends a few
# "viewed" events with curl, shows where each one stands and the PATCHes HighLevel got;
# then stops everything. Logs: instance/demo-*.log. Every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

DEMO_PORT="${DEMO_PORT:-8010}"
DEMO_HL_PORT="${DEMO_HL_PORT:-9100}"
# A short coalescing window, so the demo shows the "one more send at the end of the
# window" rule in seconds rather than a minute (the service's default is 60).
WINDOW="${DEMO_COALESCE_WINDOW_SECONDS:-5}"
BASE="http://127.0.0.1:${DEMO_PORT}"
HL_LOG=instance/demo-highlevel.log
WEB_LOG=instance/demo-web.log
FWD_LOG=instance/demo-forwarder.log

# Outside `make demo`, use the project's virtualenv if there is one.
if [[ -x .venv/bin/python && ":$PATH:" != *":$PWD/.venv/bin:"* ]]; then
    PATH="$PWD/.venv/bin:$PATH"
fi
for tool in python flask gunicorn curl; do
    command -v "$tool" >/dev/null || { echo "demo: '$tool' not found (run: make demo)" >&2; exit 1; }
done

if [[ -t 1 ]]; then
    say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
else
    say() { printf '\n==> %s\n' "$*"; }
fi

port_busy() {
    python - "$1" <<'EOF'
import socket, sys
with socket.socket() as s:
    s.settimeout(0.5)
    sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}
for port in "$DEMO_PORT" "$DEMO_HL_PORT"; do
    if port_busy "$port"; then
        echo "demo: port $port on 127.0.0.1 is in use; set DEMO_PORT / DEMO_HL_PORT" >&2
        exit 1
    fi
done

# -- the processes, and how they stop ---------------------------------------------------
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        say "stopping (SIGTERM to pids ${PIDS[*]})"
        kill -TERM "${PIDS[@]}" 2>/dev/null || true
        for _ in $(seq 100); do  # up to 10 s for a graceful exit
            local alive=0
            for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
            ((alive)) || break
            sleep 0.1
        done
        for pid in "${PIDS[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then
                echo "demo: pid $pid did not stop in 10 s; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
        done
        wait 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export FLASK_APP=service
export RELAY_ENV=development
export DATABASE_URL="sqlite:///instance/demo.db"
export HIGHLEVEL_BASE_URL="http://127.0.0.1:${DEMO_HL_PORT}"
export COALESCE_WINDOW_SECONDS="$WINDOW"
export HOST=127.0.0.1 PORT="$DEMO_PORT" WEB_CONCURRENCY="${WEB_CONCURRENCY:-2}"
export PYTHONUNBUFFERED=1

mkdir -p instance
rm -f instance/demo.db instance/demo.db-wal instance/demo.db-shm

say "schema: flask --app service db upgrade (instance/demo.db)"
flask --app service db upgrade

# Development keys live in instance/dev-secrets.json (made on first use).
KEYS="$(flask --app service keys show 2>/dev/null)"
INGEST_KEY="$(sed -n 's/^INGEST_API_KEYS=\([^,]*\).*/\1/p' <<<"$KEYS")"
ADMIN_KEY="$(sed -n 's/^ADMIN_API_KEYS=\([^,]*\).*/\1/p' <<<"$KEYS")"
if [[ -z "$INGEST_KEY" || -z "$ADMIN_KEY" ]]; then
    echo "demo: could not read the development keys from 'flask --app service keys show'" >&2
    exit 1
fi

say "fake HighLevel on 127.0.0.1:${DEMO_HL_PORT} (log: $HL_LOG)"
python -m tests.fake_highlevel --host 127.0.0.1 --port "$DEMO_HL_PORT" >"$HL_LOG" 2>&1 &
PIDS+=($!)

say "web: gunicorn on ${BASE} (log: $WEB_LOG), forwarder (log: $FWD_LOG)"
gunicorn --config config/gunicorn.conf.py "service:create_app()" >"$WEB_LOG" 2>&1 &
PIDS+=($!)
flask --app service forwarder >"$FWD_LOG" 2>&1 &
PIDS+=($!)

wait_for() {  # wait_for <what> <url> <seconds>
    local deadline=$((SECONDS + $3))
    until curl -fsS -o /dev/null --max-time 2 "$2" 2>/dev/null; do
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || {
                echo "demo: a process exited early; see instance/demo-*.log" >&2
                tail -n 20 "$HL_LOG" "$WEB_LOG" "$FWD_LOG" >&2 || true
                exit 1
            }
        done
        if ((SECONDS >= deadline)); then
            echo "demo: $1 not ready after $3 s; see instance/demo-*.log" >&2
            exit 1
        fi
        sleep 0.2
    done
}
wait_for_hl() {  # the fake is up once its port accepts connections
    local deadline=$((SECONDS + 20))
    until port_busy "$DEMO_HL_PORT"; do
        if ! kill -0 "${PIDS[0]}" 2>/dev/null || ((SECONDS >= deadline)); then
            echo "demo: fake HighLevel did not start; see $HL_LOG" >&2
            tail -n 20 "$HL_LOG" >&2 || true
            exit 1
        fi
        sleep 0.2
    done
}
wait_for_hl
wait_for "the web process (/readyz)" "${BASE}/readyz" 30
curl -fsS "${BASE}/readyz"; echo

api() {  # api <method> <path> <key> [json body]: print and keep the response body
    local method=$1 path=$2 key=$3 body=${4:-}
    local args=(-sS --max-time 10 -X "$method" -H "Authorization: Bearer ${key}"
                -w '\n%{http_code}')
    if [[ -n "$body" ]]; then
        args+=(-H 'Content-Type: application/json' --data "$body")
    fi
    local out
    out="$(curl "${args[@]}" "${BASE}${path}")"
    HTTP_STATUS="${out##*$'\n'}"
    RESPONSE="${out%$'\n'*}"
    RESPONSE="${RESPONSE%$'\n'}"
    echo "$method $path -> $HTTP_STATUS"
    if [[ -n "$RESPONSE" ]]; then echo "$RESPONSE"; fi
}
accepted() {  # stop unless the last call was answered 202
    [[ "$HTTP_STATUS" == 202 ]] || { echo "demo: expected 202, got $HTTP_STATUS" >&2; exit 1; }
}
json() {  # json <python expression over `d`>: evaluate against $RESPONSE
    python -c "import json, sys; d = json.load(sys.stdin); print($1)" <<<"$RESPONSE"
}

say "store a token for demo_location (admin key)"
api PUT /v1/locations/demo_location/token "$ADMIN_KEY" \
    '{"accessToken": "demo-private-integration-token"}'
[[ "$HTTP_STATUS" == 200 ]] || { echo "demo: storing the token failed" >&2; exit 1; }

IDS=()
say "1. invoice INV-1001 viewed (first view: sent at once)"
api POST /v1/events "$INGEST_KEY" '{"locationId": "demo_location", "invoiceId": "INV-1001"}'

accepted
IDS+=("$(json 'd["id"]')")

event_status() {  # event_status <id>: queued, delivered, ... ("error" if the call failed)
    curl -fsS --max-time 5 -H "Authorization: Bearer ${INGEST_KEY}" "${BASE}/v1/events/$1" |
        python -c 'import json, sys; print(json.load(sys.stdin)["status"])' 2>/dev/null ||
        echo error
}

printf 'waiting for its PATCH'
deadline=$((SECONDS + 10))
until [[ "$(event_status "${IDS[0]}")" == delivered ]] || ((SECONDS >= deadline)); do
    printf .
    sleep 0.3
done
echo " $(event_status "${IDS[0]}")"

say "2. INV-1001 viewed again (coalesced: at most one more send, ${WINDOW} s after the first)"
api POST /v1/events "$INGEST_KEY" \
    '{"locationId": "demo_location", "invoiceId": "INV-1001", "source": "portal"}'

accepted
IDS+=("$(json 'd["id"]')")

say "3. estimate EST-2001 viewed"
api POST /v1/events "$INGEST_KEY" '{"locationId": "demo_location", "estimateId": "EST-2001"}'

accepted
IDS+=("$(json 'd["id"]')")

say "4. a batch: INV-1002, INV-1003, and INV-1002 again (one PATCH covers both views)"
api POST /v1/events "$INGEST_KEY" '{"events": [
    {"locationId": "demo_location", "invoiceId": "INV-1002"},
    {"locationId": "demo_location", "invoiceId": "INV-1003", "eventId": "demo-evt-1003"},
    {"locationId": "demo_location", "invoiceId": "INV-1002"}]}'
accepted
while read -r id; do IDS+=("$id"); done < <(json '"\n".join(e["id"] for e in d["events"])')

say "waiting for the forwarder (up to $((WINDOW + 15)) s)"
deadline=$((SECONDS + WINDOW + 15))
while :; do
    queued=0
    for id in "${IDS[@]}"; do
        status="$(event_status "$id")"
        [[ "$status" == queued || "$status" == error ]] && queued=$((queued + 1))
    done
    if ((queued == 0)); then echo "every event has left the queue"; break; fi
    if ((SECONDS >= deadline)); then echo "still queued: $queued (the demo stops anyway)"; break; fi
    sleep 1
done

say "where each event stands: GET /v1/events/<id>"
for id in "${IDS[@]}"; do
    api GET "/v1/events/${id}" "$INGEST_KEY" >/dev/null
    RESPONSE="$RESPONSE" python - <<'EOF'
import json, os
d = json.loads(os.environ["RESPONSE"])
print(f"{d['id']}  {d['kind']:<8} {d['documentId']:<9} {d['status']:<10} "
      f"viewed {d['viewedAt']}  delivered {d.get('deliveredAt') or '-'}")
EOF
done

say "GET /v1/locations/demo_location"
api GET /v1/locations/demo_location "$ADMIN_KEY"

say "what the fake HighLevel received ($HL_LOG)"
# One line per request; matched piecewise, since the fake's handler threads can print two
# lines run together.
grep -oE 'PATCH [^ ]+ -> [0-9]+ [^ ]+ [^ ]+ token=(\.\.\.[^ ]{4}|\*{4}|-)' "$HL_LOG" ||
    echo "(no PATCH received)"
echo "(expected: INV-1001 twice, its first view at once and the repeat at the end of the"
echo " ${WINDOW} s coalescing window; EST-2001, INV-1002 and INV-1003 once each: the two"
echo " views of INV-1002 in the batch share one PATCH)"
