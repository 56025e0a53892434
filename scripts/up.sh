#!/usr/bin/env bash
# Brings the system up on the embedded defaults and shows the KMS answering:
#   1. installs what a fresh Debian 12 machine lacks (Prosody, ejabberd, tmux, chromium from
#      Debian's packages; npm packages) and builds the browser bundles,
#   2. starts a local Prosody from prosody-config/prosody.test.cfg.lua on loopback ports,
#   3. registers the demo users alice, bob, carol and dave (password: <name>-password),
#   4. starts the KMS component (LevelDB in ./data, self-signed identity) with the development
#      OpenID Connect provider (`kms run --idp`, http://127.0.0.1:5580, the same demo users),
#   5. runs `kms demo`: both users sign in at the IdP (device flow) and share a group key
#      through the KMS over XMPP,
#   6. serves converse.js with the KMS plugin (`kms web`) on http://127.0.0.1:8080/.
# Then it keeps running until Ctrl-C (or exits after the demo with --exit-after-demo).
set -euo pipefail
cd "$(dirname "$0")/.."
EXIT_AFTER_DEMO=0
[[ "${1:-}" == "--exit-after-demo" ]] && EXIT_AFTER_DEMO=1

step() { printf '\n== %s\n' "$*"; }

step "system packages (Prosody, ejabberd, tmux, chromium)"
if [[ $(id -u) -eq 0 ]]; then bash scripts/install-system-deps.sh; else sudo bash scripts/install-system-deps.sh; fi
step "npm packages"
[[ -d node_modules/@xmpp/component ]] || npm ci --no-audit --no-fund
node scripts/build-browser.mjs # dist/browser: the plugin and sign-in bundles that `kms web` serves

RUN="$PWD/.run/prosody"
mkdir -p "$RUN/data" "$RUN/certs"
export PROSODY_TEST_DATA_DIR="$RUN/data" PROSODY_TEST_PID_FILE="$RUN/prosody.pid" PROSODY_TEST_LOG_FILE="$RUN/prosody.log" \
  PROSODY_TEST_CERTS_DIR="$RUN/certs" PROSODY_TEST_C2S_PORT="${UP_C2S_PORT:-15222}" PROSODY_TEST_COMPONENT_PORT="${UP_COMPONENT_PORT:-15347}" \
  PROSODY_TEST_HTTP_PORT="${UP_HTTP_PORT:-15280}" PROSODY_TEST_COMPONENT_SECRET="${KMS_XMPP_SECRET:-kms-dev-secret}"
CFG=prosody-config/prosody.test.cfg.lua

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

step "Prosody on 127.0.0.1:$PROSODY_TEST_C2S_PORT (component port $PROSODY_TEST_COMPONENT_PORT, log $PROSODY_TEST_LOG_FILE)"
prosody -F --config "$CFG" >"$RUN/stdout.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PROSODY_TEST_COMPONENT_PORT") 2>/dev/null && break
  sleep 0.1
done
for u in alice bob carol dave; do prosodyctl --config "$CFG" register "$u" localhost "$u-password" >/dev/null 2>&1; done
echo "users: alice, bob, carol and dave @localhost, each with the password <name>-password"

IDP_PORT="${UP_IDP_PORT:-5580}"
WEB_PORT="${UP_WEB_PORT:-8080}"
ISSUER="http://127.0.0.1:$IDP_PORT"
step "KMS component kms.localhost (data in ./data) and the identity provider $ISSUER"
export KMS_XMPP_SERVICE="xmpp://127.0.0.1:$PROSODY_TEST_COMPONENT_PORT" KMS_XMPP_SECRET="$PROSODY_TEST_COMPONENT_SECRET"
export KMS_DATA_DIR="${KMS_DATA_DIR:-$PWD/data}"
./bin/kms.js run --idp "$IDP_PORT" >"$PWD/.run/kms.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do
  grep -q '"event":"online"' "$PWD/.run/kms.log" 2>/dev/null && break
  sleep 0.2
done
grep -q '"event":"online"' "$PWD/.run/kms.log" || { echo "the component did not come online; see .run/kms.log"; cat "$PWD/.run/kms.log"; exit 1; }
echo "component online (log: .run/kms.log); identity provider $ISSUER"

step "demonstration"
./bin/kms.js demo --xmpp "xmpp://127.0.0.1:$PROSODY_TEST_C2S_PORT" --issuer "$ISSUER"

if [[ $EXIT_AFTER_DEMO -eq 1 ]]; then exit 0; fi
./bin/kms.js web --websocket "ws://127.0.0.1:$PROSODY_TEST_HTTP_PORT/xmpp-websocket" --issuer "$ISSUER" --port "$WEB_PORT" >"$PWD/.run/web.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  grep -q 'converse.js with the KMS plugin' "$PWD/.run/web.log" 2>/dev/null && break
  sleep 0.1
done
ROOM=planning@conference.localhost
step "running. Chat, encrypted, in a browser and in a terminal:"
cat <<EOT
  browser:  open http://127.0.0.1:$WEB_PORT/?room=$ROOM
            sign in at the identity provider as alice (password alice-password), then log in to
            XMPP as alice@localhost (password alice-password) and click "KMS: off" to turn it on
  terminal: KMS_CHAT_PASSWORD=bob-password ./bin/kms.js chat --xmpp xmpp://127.0.0.1:$PROSODY_TEST_C2S_PORT \\
              --user bob --room $ROOM --issuer $ISSUER
            open the address it prints, sign in as bob (password bob-password)
  The first to turn encryption on makes the room's chain with the occupants (Alice's toggle) or
  use --create alice@localhost in the terminal. Logs: .run/. Ctrl-C stops everything.
EOT
wait
