-- ###########################################################################################
-- ##                                                                                       ##
-- ##   TEST-ONLY CONFIGURATION. NEVER USE IN PRODUCTION.                                   ##
-- ##                                                                                       ##
-- ##   Plain-text passwords over unencrypted TCP, no TLS, runs as root, no rate limits.    ##
-- ##   It exists so that test/e2e/harness/servers.ts can start a throw-away Prosody on      ##
-- ##   free loopback ports in a temporary directory. For a real deployment see              ##
-- ##   prosody.production.cfg.lua and README.md in this folder.                             ##
-- ##                                                                                       ##
-- ###########################################################################################
--
-- Start it with (the harness does this for you):
--   prosody -F --config prosody-config/prosody.test.cfg.lua
-- with these environment variables set (all required; the config refuses to load without them):
--   PROSODY_TEST_DATA_DIR          data directory (accounts, archives), must exist
--   PROSODY_TEST_PID_FILE          pid file path
--   PROSODY_TEST_LOG_FILE          log file path
--   PROSODY_TEST_CERTS_DIR         an existing, possibly empty, directory (avoids a certificate-index error)
--   PROSODY_TEST_C2S_PORT          client-to-server port (127.0.0.1 only)
--   PROSODY_TEST_COMPONENT_PORT    XEP-0114 external component port (127.0.0.1 only)
--   PROSODY_TEST_HTTP_PORT         HTTP port for BOSH, WebSocket and HTTP File Upload (127.0.0.1 only)
--   PROSODY_TEST_COMPONENT_SECRET  shared secret of the kms.localhost component
-- optional:
--   PROSODY_TEST_LOG_LEVEL         debug | info (default) | warn | error
--
-- Prosody evaluates ENV_FOO as os.getenv("FOO") inside a config file; the helpers below add a
-- check so that a missing variable fails at start-up with its name, not as a confusing port error.

local function required_env(name)
	local value = os.getenv(name)
	if value == nil or value == "" then
		error("prosody.test.cfg.lua: environment variable " .. name .. " is not set", 0)
	end
	return value
end

local function required_port(name)
	local port = tonumber(required_env(name))
	if port == nil or port < 1 or port > 65535 then
		error("prosody.test.cfg.lua: " .. name .. " is not a TCP port: " .. tostring(os.getenv(name)), 0)
	end
	return port
end

-- Running as root is what CI does; Prosody shuts itself down as root unless told otherwise.
run_as_root = true

data_path = required_env("PROSODY_TEST_DATA_DIR")
pidfile = required_env("PROSODY_TEST_PID_FILE")
certificates = required_env("PROSODY_TEST_CERTS_DIR")
log = {
	[os.getenv("PROSODY_TEST_LOG_LEVEL") or "info"] = required_env("PROSODY_TEST_LOG_FILE");
}

-- Loopback only, on the ports the harness picked. The defaults (5222, 5347, 5280) are never used,
-- so a test instance cannot clash with a system Prosody, or with another test instance.
interfaces = { "127.0.0.1" }
c2s_interfaces = { "127.0.0.1" }
c2s_ports = { required_port("PROSODY_TEST_C2S_PORT") }
component_interfaces = { "127.0.0.1" }
component_ports = { required_port("PROSODY_TEST_COMPONENT_PORT") }
http_interfaces = { "127.0.0.1" }
http_ports = { required_port("PROSODY_TEST_HTTP_PORT") }
https_ports = {}
c2s_direct_tls_ports = {}

-- No TLS in tests: without these two settings no SASL mechanism is offered on plain TCP and clients
-- fail with "No stream features to proceed with". PLAIN also lets the test clients skip SCRAM,
-- which xmpp.js computes in JavaScript (about 1.25 s per login).
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"

modules_enabled = {
	"disco";     -- service discovery (XEP-0030)
	"roster";    -- rosters (RFC 6121)
	"saslauth";  -- SASL authentication
	"ping";      -- XEP-0199, answers keepalive pings
	"mam";       -- XEP-0313 message archive for user accounts
	"register";  -- XEP-0077 (only password change; account creation is off below)
	"http";      -- HTTP server for the two below
	"bosh";      -- XEP-0206 on /http-bind
	"websocket"; -- RFC 7395 on /xmpp-websocket
	"posix";     -- writes the pid file
}
modules_disabled = {
	"s2s";            -- no server-to-server federation in tests
	"s2s_auth_certs";
	"tls";            -- no certificates in tests
}
s2s_ports = {}

-- Browser clients (converse.js in test/browser) connect over WebSocket from a page served on another
-- loopback port: accept any Origin, and treat the unencrypted loopback WebSocket as secure enough
-- for PLAIN (like c2s above; tests only).
cross_domain_websocket = true
consider_websocket_secure = true

-- Accounts are created by the harness with prosodyctl, not in-band.
allow_registration = false

-- User archives: store everything, keep it for the whole (short) life of the test server.
default_archive_policy = true
archive_expires_after = "never"

-- No bandwidth limits (mod_limits is not loaded) and generous stanza size, for benchmarks.
c2s_stanza_size_limit = 1024 * 1024
component_stanza_size_limit = 1024 * 1024

VirtualHost "localhost"

-- The KMS, as an XEP-0114 external component.
Component "kms.localhost"
	component_secret = required_env("PROSODY_TEST_COMPONENT_SECRET")

-- Multi-user chat for the end-to-end encrypted rooms, with its history archived (XEP-0313 on MUC)
-- so that a test can fetch earlier, encrypted, messages later.
Component "conference.localhost" "muc"
	modules_enabled = { "muc_mam" }
	muc_room_locking = false               -- a new room is usable at once, no configuration step
	muc_room_default_persistent = true     -- rooms (and their archive) outlive their last occupant
	muc_log_all_rooms = true               -- archive every room, whatever its configuration says
	muc_log_expires_after = "never"
	max_history_messages = 50

-- HTTP File Upload (XEP-0363) for encrypted file sharing: upload.localhost hands out slots on the
-- loopback HTTP port above; the files (ciphertext only) are kept under the data directory.
Component "upload.localhost" "http_file_share"
	http_host = "127.0.0.1"
	http_external_url = "http://127.0.0.1:" .. required_port("PROSODY_TEST_HTTP_PORT") .. "/"
	http_file_share_size_limit = 16 * 1024 * 1024
	-- CORS: converse.js uploads (PUT) and the plugin downloads (GET) from a page of another origin
	-- (kms web's port). mod_http_file_share enables CORS for its PUT and GET itself (Prosody 0.12:
	-- any origin, Content-Type and Authorization allowed); http_cors_override = { file_share = ... }
	-- on the VirtualHost would narrow the origins.
