#!/bin/bash
# scripts/uml/init.sh -- PID 1 inside the user-mode-linux guest started by
# scripts/uml/run.sh (which copies this file into its run folder and boots
# `linux.uml ... rootfstype=hostfs rootflags=/ rw init=<run folder>/init.sh`).
#
# The root file system is the HOST's / (hostfs, read-write), so this script
# must not write anything outside the run folder: everything else it
# touches is a guest-only mount (proc, sysfs, devtmpfs, tmpfs).
#
# Steps: mount proc/sys/dev, tmpfs on /run (so `ip netns add` never writes
# the host's /run) and on /lib/modules if that exists; make modprobe (also
# the kernel's autoloader) use /usr/lib/uml/modules/$(uname -r); load the
# IPsec/veth modules; bring up lo; pre-warm the ESP crypto (the first SA
# with a new algorithm otherwise takes ~1.5-2 s); run the command from
# config.sh with output to <run>/output; write its exit status to
# <run>/status; power off.
#
# Errors before the command runs are printed on the UML console (run.sh
# shows it when no status was reported).  The EXIT trap guarantees that PID 1
# never just exits (that would panic the UML kernel); it always powers off.
set -euo pipefail

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/swift/usr/bin
run=$(cd "$(dirname "$0")" && pwd -P)

# Power off via magic SysRq: pure kernel, no user space involved.  Do NOT
# prefer `poweroff -f`: without systemd as PID 1, systemctl's compat mode
# appends a "shutdown" record to the host's /var/log/wtmp (hostfs!).
power_off() {
  trap - EXIT
  sync || true
  echo o >/proc/sysrq-trigger 2>/dev/null || true
  sleep 2
  poweroff -f --no-wtmp >/dev/null 2>&1 || true
  sleep 30
}
trap 'echo "uml init: error at line $LINENO: $BASH_COMMAND" >&2' ERR
trap 'echo "uml init: aborted before the command ran" >&2; power_off' EXIT

# True if $1 is a mount point of file-system type $2 (from /proc/mounts).
mounted_as() {
  local _dev mnt type _rest
  while read -r _dev mnt type _rest; do
    [[ $mnt == "$1" && $type == "$2" ]] && return 0
  done </proc/mounts
  return 1
}

mount -n -t proc proc /proc
mounted_as /sys sysfs || mount -n -t sysfs sysfs /sys
# devtmpfs is normally auto-mounted (CONFIG_DEVTMPFS_MOUNT); without it /dev
# would be the host's /dev, which we must not write to.
mounted_as /dev devtmpfs || mount -n -t devtmpfs devtmpfs /dev
if mounted_as /dev devtmpfs; then
  mkdir -p /dev/pts /dev/shm
  mount -n -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts || true
  mount -n -t tmpfs -o mode=1777 tmpfs /dev/shm || true
  [[ -e /dev/fd ]] || ln -s /proc/self/fd /dev/fd
  [[ -e /dev/stdin ]] || ln -s /proc/self/fd/0 /dev/stdin
  [[ -e /dev/stdout ]] || ln -s /proc/self/fd/1 /dev/stdout
  [[ -e /dev/stderr ]] || ln -s /proc/self/fd/2 /dev/stderr
fi
mount -n -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/lock /run/netns
echo uml >/proc/sys/kernel/hostname

# Config written by run.sh: UML_MODULES_DIR, UML_CWD, UML_ENV=(), UML_CMD=().
# shellcheck source=/dev/null
. "$run/config.sh"

# Kernel modules.  The host may have no /lib/modules directory (and we may
# not create one: it is the host's disk), so modprobe gets its own root
# with -d via a wrapper that also serves the kernel's module autoloader.
kver=$(uname -r)
moddir=${UML_MODULES_DIR:-/usr/lib/uml/modules/$kver}
if [[ -d /lib/modules ]]; then
  mount -n -t tmpfs -o mode=755 tmpfs /lib/modules
  ln -s "$moddir" "/lib/modules/$kver"
fi
mkdir -p "$run/modroot/lib/modules" "$run/bin"
ln -s "$moddir" "$run/modroot/lib/modules/$kver"
real_modprobe=$(command -v modprobe)
printf '#!/bin/sh\nexec %s -d %s "$@"\n' "$real_modprobe" "$run/modroot" >"$run/bin/modprobe"
chmod 755 "$run/bin/modprobe"
echo "$run/bin/modprobe" >/proc/sys/kernel/modprobe
export PATH=$run/bin:$PATH
# Load what IPsec/netns tests need.  Built-in ones are fine.  The crypto
# modules are listed explicitly so the pre-warm below needs no autoloading.
modprobe -a esp4 esp6 ah4 xfrm_user gcm authenc veth \
  ghash_generic ctr seqiv echainiv cbc hmac drbg sha512_generic ||
  echo "uml init: warning: some modules failed to load" >&2

ip link set lo up

# Pre-warm: the first SA with a new algorithm instantiates the crypto
# templates (rfc4106(gcm(aes)), authenc(hmac(sha256),cbc(aes)), their IV
# generators and the DRBG).  Each name not yet registered makes the kernel
# spawn modprobe twice ("crypto-NAME", "crypto-NAME-all"), ~0.1 s each in
# UML, ~2-3 s in total.  With the modules above already loaded those
# lookups are useless (jitterentropy_rng, wanted by drbg, even fails to
# load in UML: EFAULT; drbg works without it), so switch autoloading off
# meanwhile (empty kernel.modprobe = no helper spawned), then forget the
# SAs; the instantiated algorithms stay registered for the command's SAs.
echo >/proc/sys/kernel/modprobe
{
  ip xfrm state add src 127.0.0.1 dst 127.0.0.1 proto esp spi 0x1 \
    mode transport aead 'rfc4106(gcm(aes))' 0x0102030405060708090a0b0c0d0e0f1011121314 128
  ip xfrm state add src 127.0.0.1 dst 127.0.0.1 proto esp spi 0x2 \
    mode transport enc 'cbc(aes)' 0x000102030405060708090a0b0c0d0e0f \
    auth 'hmac(sha256)' 0x000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f
  ip xfrm state flush
} || echo "uml init: warning: ESP pre-warm failed" >&2
echo "$run/bin/modprobe" >/proc/sys/kernel/modprobe

# Run the command: clean environment, cwd preserved, output to the run
# folder (run.sh streams it), status reported through <run>/status.
trap - ERR
set +e
(
  mkdir -p "$run/tmp"
  path=$PATH
  for v in $(compgen -e); do unset "$v"; done
  # Temporary files go to the run folder, which run.sh removes: whatever the
  # command's processes leave when the kernel powers off under them (a
  # private charon's folder, captures) never stays in the host's /tmp.
  export PATH=$path HOME=/root TERM=dumb UML_INSIDE=1 UML_RUN_DIR=$run TMPDIR=$run/tmp
  for a in "${UML_ENV[@]}"; do export "${a?}"; done
  cd "$UML_CWD" || exit 125
  exec "${UML_CMD[@]}"
) </dev/null >>"$run/output" 2>&1
rc=$?
set -e
echo "$rc" >"$run/status.tmp"
mv -f "$run/status.tmp" "$run/status"
power_off
