-- Key Management Service (KMS): the snippet an operator adds to their own Prosody configuration
-- (/etc/prosody/prosody.cfg.lua, or a file in /etc/prosody/conf.d/ included by it).
-- Prosody 0.12 or later. Replace example.org by your domain, and every CHANGE-ME.
-- See README.md in this folder for what each option does and the usual mistakes.

---------------------------------------------------------------------------------------------------
-- 1. Global section: these lines must come BEFORE the first VirtualHost or Component line of the
--    main config file, or Prosody applies them to that host only (or ignores them).
---------------------------------------------------------------------------------------------------

-- The TCP port external components (XEP-0114) connect to. 5347 is the conventional port.
component_ports = { 5347 }

-- Listen for components on loopback only when the KMS runs on the same machine as Prosody.
-- XEP-0114 is not encrypted: if the KMS runs elsewhere, use a private network or a tunnel
-- (WireGuard, stunnel, SSH) rather than exposing this port; the secret is the only protection.
component_interfaces = { "127.0.0.1", "::1" }

-- Largest stanza accepted from a component, in bytes (default 512 KiB; a global option).
-- Group key bundles for large rooms can be big: raise it if the KMS's connection is closed with
-- stream error <policy-violation/>.
component_stanza_size_limit = 1024 * 1024

---------------------------------------------------------------------------------------------------
-- 2. The KMS itself, as an external component.
---------------------------------------------------------------------------------------------------

-- The KMS's address. Clients send their KMS requests to this JID. It must be a name that Prosody
-- serves (a subdomain of a VirtualHost is conventional); remote clients reach it over s2s, so it
-- also needs DNS (an A/AAAA or SRV record pointing at this server) if it is to be federated.
Component "kms.example.org"
	-- The shared secret the KMS presents in its handshake (XEP-0114 §3). Must equal the KMS's
	-- KMS_XMPP_SECRET (xmpp.secret). Use a long random value, e.g. `openssl rand -base64 32`, keep this
	-- file readable by root/prosody only, and never reuse the example below.
	component_secret = "CHANGE-ME-to-a-long-random-secret"

	-- What happens when a second connection arrives for kms.example.org while one is connected:
	-- "kick_new" (Prosody's default) refuses the newcomer with stream error <conflict/>;
	-- "kick_old" replaces the old connection. Keep "kick_new" to make an accidental second KMS
	-- instance fail loudly; switch to "kick_old" if a restarted KMS must take over at once from a
	-- connection Prosody has not yet noticed is dead (e.g. after a network partition).
	component_conflict_resolve = "kick_new"

	-- Stanzas from the component must carry a 'from' inside kms.example.org (default true).
	validate_from_addresses = true

---------------------------------------------------------------------------------------------------
-- 3. The multi-user chat service for the end-to-end encrypted rooms, with archived history.
--    Skip this block if you already have a MUC component; add "muc_mam" to its modules_enabled.
---------------------------------------------------------------------------------------------------

Component "conference.example.org" "muc"
	-- XEP-0313 Message Archive Management for rooms: members who were offline fetch the
	-- (encrypted) history later. Requires an archive-capable storage (internal or sql).
	modules_enabled = { "muc_mam" }

	-- Archive rooms unless their owner turns archiving off in the room configuration.
	muc_log_by_default = true

	-- Keep room archives this long ("1w", "1y", "never"). Encrypted history is useless once the
	-- group keys needed to read it are gone: align this with the KMS's key retention.
	muc_log_expires_after = "1y"

	-- Rooms survive their last occupant leaving (and so does access to their archive).
	muc_room_default_persistent = true

	-- Only members may join; the KMS's group membership is the cryptographic boundary, room
	-- membership the routing one. Adjust to your product.
	muc_room_default_members_only = true

	-- Who may create rooms: "local" = users of this server (other values: "admin", true/false).
	restrict_room_creation = "local"

	-- Rooms are locked until configured by their creator (XEP-0045 §10.1.3, Prosody's default).
	muc_room_locking = true

	-- Up to this many recent messages are replayed on join (the rest via MAM).
	max_history_messages = 20
