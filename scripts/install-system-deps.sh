#!/usr/bin/env bash
# Installs the system packages the end-to-end tests and the XMPP benchmark need on Debian 12
# (Prosody, ejabberd, tmux, openssl for the federation test CA; Chromium for the browser test, test/browser, driven by playwright-core
# through its executablePath: no browser is downloaded; etcd-server and etcd-client (etcdctl) for the etcd store's tests, which
# start their own 3-node cluster; softhsm2, a software PKCS#11 token, for the master key wrapped by an HSM key, test/crypto/pkcs11.test.ts), and makes sure the system-wide Prosody/ejabberd/etcd services that
# Debian would start on install are stopped and disabled: the tests run their own private instances
# on free loopback ports, and a system instance would only hold the default ports (2379/2380 for etcd) and an epmd daemon.
#
# Idempotent: a fast no-op when everything is present. Run as root:
#   sudo scripts/install-system-deps.sh
set -euo pipefail

PACKAGES=(prosody lua-unbound ejabberd tmux chromium openssl etcd-server etcd-client softhsm2)
SERVICES=(prosody ejabberd etcd)

log() { printf '[install-system-deps] %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  echo "install-system-deps.sh must run as root (it calls apt-get)" >&2
  exit 1
fi

is_installed() {
  [[ $(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true) == installed ]]
}

missing=()
for pkg in "${PACKAGES[@]}"; do
  is_installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  log "all packages present: ${PACKAGES[*]}"
else
  log "missing packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep maintainer scripts from starting the system services at all while installing (the usual
  # policy-rc.d convention); only when the machine has no policy of its own, and removed afterwards.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\n# temporary, written by install-system-deps.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
    log "temporarily installed $policy so that apt does not start services"
  fi
  log "apt-get update"
  apt-get update -qq
  log "apt-get install ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "installed: ${missing[*]}"
fi

# Stop and disable the system-wide services, whatever init system this machine runs.
for svc in "${SERVICES[@]}"; do
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      systemctl stop "$svc" && log "stopped $svc (systemd)"
    fi
    if systemctl is-enabled --quiet "$svc" 2>/dev/null; then
      systemctl disable --quiet "$svc" && log "disabled $svc (systemd)"
    fi
  elif [[ -x /etc/init.d/$svc ]]; then
    # Not "/etc/init.d/ejabberd status": that boots an Erlang VM, which itself starts a global epmd.
    # The system services run as their own user (prosody, ejabberd, etcd); private test instances run as root.
    if id -u "$svc" >/dev/null 2>&1 && pgrep -u "$svc" >/dev/null 2>&1; then
      /etc/init.d/"$svc" stop >/dev/null 2>&1 || true
      log "stopped $svc (init.d)"
    fi
    if compgen -G "/etc/rc[2-5].d/S??$svc" >/dev/null; then
      update-rc.d "$svc" disable >/dev/null 2>&1 && log "disabled $svc (update-rc.d)"
    fi
  fi
done

# A system ejabberd leaves a global epmd behind on port 4369; stop it if no Erlang node uses it.
if command -v epmd >/dev/null && pgrep -x epmd >/dev/null && epmd -names >/dev/null 2>&1; then
  if [[ -z $(epmd -names 2>/dev/null | grep '^name ' || true) ]]; then
    epmd -kill >/dev/null 2>&1 && log "stopped an idle global epmd"
  else
    log "note: a global epmd is serving Erlang nodes, left running: $(epmd -names | grep '^name ' | tr '\n' ' ')"
  fi
fi

# Report what the tests will find.
log "prosody:  $(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo absent)"
log "ejabberd: $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo absent)"
log "chromium: $(dpkg-query -W -f='${Version}' chromium 2>/dev/null || echo absent)"
log "etcd:     $(dpkg-query -W -f='${Version}' etcd-server 2>/dev/null || echo absent)"
log "done"
