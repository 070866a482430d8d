#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine (run as root).
# Swift itself is expected at /opt/swift (or on PATH).
set -euo pipefail
packages=(
  gcc libc6-dev                                         # the C sample programs of the C ABI
  pkg-config libnl-3-dev libnl-xfrm-3-dev libmnl-dev   # CModules/CNetlink
  iproute2 kmod tcpdump                                # namespaces, veth, captures
  systemd                                              # tier 2: wss-keyd socket-activated (systemd-socket-activate)
  python3-minimal util-linux openssl                   # tier 2: another user binding a port (setpriv); tier 3: a crafted certificate
  user-mode-linux                                      # the ESP-capable kernel for tier 3
  strongswan-charon strongswan-swanctl strongswan-pki  # keying: charon driven over VICI, test certificates
  libcharon-extra-plugins                              # eap-identity / eap-md5 for the second auth round
  libstrongswan-standard-plugins                       # openssl + gcm: ECDSA, X25519/ECP groups, AES-GCM in charon
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v swift >/dev/null 2>&1; then
  if [[ -x /opt/swift/usr/bin/swift ]]; then
    echo "swift is at /opt/swift/usr/bin; add it to PATH" >&2
  else
    echo "Swift 6.x toolchain not found (expected /opt/swift)" >&2
    exit 1
  fi
fi
