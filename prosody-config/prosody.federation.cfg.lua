-- ###########################################################################################
-- ##                                                                                       ##
-- ##   TEST-ONLY CONFIGURATION. NEVER USE IN PRODUCTION.                                   ##
-- ##                                                                                       ##
-- ##   One XMPP domain of a two-server federation test (test/e2e/harness/federation.ts):    ##
-- ##   plain-text c2s passwords on a loopback address, runs as root, certificates from a    ##
-- ##   throw-away test CA. Server-to-server links use STARTTLS with verified certificates   ##
-- ##   (SASL EXTERNAL, no dialback).                                                        ##
-- ##                                                                                       ##
-- ###########################################################################################
--
-- Environment (all required except the log level):
--   PROSODY_FED_DOMAIN            the XMPP domain, e.g. a.test (its kms., conference. subdomains follow)
--   PROSODY_FED_ADDRESS           the loopback address every listener binds, e.g. 127.0.0.2
--   PROSODY_FED_DATA_DIR          data directory (accounts, archives), must exist
--   PROSODY_FED_PID_FILE          pid file path
--   PROSODY_FED_LOG_FILE          log file path
--   PROSODY_FED_CERTS_DIR         an existing EMPTY directory (Prosody's certificate index; a
--                                 certificate found there would enable STARTTLS on c2s)
--   PROSODY_FED_CERT_FILE         PEM certificate for the domain and its subdomains
--   PROSODY_FED_KEY_FILE          its private key
--   PROSODY_FED_CA_FILE           the test CA every peer certificate must chain to
--   PROSODY_FED_C2S_PORT          client-to-server port
--   PROSODY_FED_S2S_PORT          server-to-server port (5269: peers find it by name, without SRV)
--   PROSODY_FED_COMPONENT_PORT    XEP-0114 external component port
--   PROSODY_FED_HTTP_PORT         HTTP port (BOSH, WebSocket)
--   PROSODY_FED_COMPONENT_SECRET  shared secret of the kms.<domain> component
--   PROSODY_FED_LOG_LEVEL         debug | info (default) | warn | error

local function required_env(name)
	local value = os.getenv(name)
	if value == nil or value == "" then
		error("prosody.federation.cfg.lua: environment variable " .. name .. " is not set", 0)
	end
	return value
end

local function required_port(name)
	local port = tonumber(required_env(name))
	if port == nil or port < 1 or port > 65535 then
		error("prosody.federation.cfg.lua: " .. name .. " is not a TCP port: " .. tostring(os.getenv(name)), 0)
	end
	return port
end

local domain = required_env("PROSODY_FED_DOMAIN")
local address = required_env("PROSODY_FED_ADDRESS")

run_as_root = true

data_path = required_env("PROSODY_FED_DATA_DIR")
certificates = required_env("PROSODY_FED_CERTS_DIR")
pidfile = required_env("PROSODY_FED_PID_FILE")
log = {
	[os.getenv("PROSODY_FED_LOG_LEVEL") or "info"] = required_env("PROSODY_FED_LOG_FILE");
}
-- /etc/hosts (written by the harness) is the only name source: no DNS server is reachable here.
unbound = { hoststxt = "/etc/hosts"; resolvconf = false }

interfaces = { address }
c2s_interfaces = { address }
c2s_ports = { required_port("PROSODY_FED_C2S_PORT") }
s2s_interfaces = { address }
s2s_ports = { required_port("PROSODY_FED_S2S_PORT") }
component_interfaces = { address }
component_ports = { required_port("PROSODY_FED_COMPONENT_PORT") }
http_interfaces = { address }
http_ports = { required_port("PROSODY_FED_HTTP_PORT") }
https_ports = {}
c2s_direct_tls_ports = {}
s2s_direct_tls_ports = {}

-- c2s: no TLS (PLAIN on loopback, as in prosody.test.cfg.lua; the test clients do not trust the
-- test CA). The certificate is configured for s2s only (s2s_ssl). Without a c2s certificate
-- Prosody would still offer STARTTLS and then fail the handshake; a certificate without a key makes
-- the c2s TLS context fail to load instead (mod_tls logs "Error creating context for c2s: No key
-- present ...") and no STARTTLS is offered to clients.
c2s_ssl = { certificate = required_env("PROSODY_FED_CERT_FILE") }
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
storage = "internal"

-- s2s: STARTTLS required, the peer's certificate must chain to the test CA and name the peer
-- domain; authentication by SASL EXTERNAL only (mod_dialback is not loaded).
s2s_ssl = {
	certificate = required_env("PROSODY_FED_CERT_FILE");
	key = required_env("PROSODY_FED_KEY_FILE");
	cafile = required_env("PROSODY_FED_CA_FILE");
}
s2s_require_encryption = true
s2s_secure_auth = true
s2s_timeout = 10

modules_enabled = {
	"tls";       -- STARTTLS for s2s
	"saslauth";  -- SASL (c2s PLAIN; s2s EXTERNAL)
	"disco";
	"roster";
	"ping";
	"mam";
	"http";
	"bosh";
	"websocket";
	"posix";
}
modules_disabled = {
	"dialback";
}

cross_domain_websocket = true
consider_websocket_secure = true
allow_registration = false
default_archive_policy = true
archive_expires_after = "never"
c2s_stanza_size_limit = 1024 * 1024
s2s_stanza_size_limit = 1024 * 1024
component_stanza_size_limit = 1024 * 1024

VirtualHost(domain)

Component("kms." .. domain)
	component_secret = required_env("PROSODY_FED_COMPONENT_SECRET")

Component("conference." .. domain) "muc"
	modules_enabled = { "muc_mam" }
	muc_room_locking = false
	muc_room_default_persistent = true
	muc_log_all_rooms = true
	muc_log_expires_after = "never"
	max_history_messages = 50
