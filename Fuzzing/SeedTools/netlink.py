#!/usr/bin/env python3
"""Captures NETLINK_XFRM datagrams from a real kernel as seeds for the `netlink` fuzz target.

Run as root in a fresh network namespace of a kernel with ESP (Fuzzing/SeedTools/capture.sh runs it under
user-mode-linux): `ip xfrm` adds, updates and deletes states and policies while one socket listens on every XFRM
multicast group and another dumps and gets them; every datagram the kernel sends is written, unchanged, to
OUTDIR/<what>-<n>. Nothing here is parsed: the point is the kernel's own bytes.
"""
import os
import socket
import struct
import subprocess
import sys
import time

NETLINK_XFRM = 6
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
XFRM_MSG_NEWSA, XFRM_MSG_GETSA, XFRM_MSG_GETPOLICY = 0x10, 0x12, 0x15
NLMSG_ERROR, NLMSG_DONE = 2, 3

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
counts = {}
seen = set()


def save(what, data):
    """Writes one seed, unless the same bytes were already written."""
    if data in seen:
        return
    seen.add(data)
    counts[what] = counts.get(what, 0) + 1
    with open(os.path.join(out, f"{what}-{counts[what]}"), "wb") as f:
        f.write(data)


def ip(*args, check=True):
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        sys.exit(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.returncode == 0


def types(data):
    """The message types in a datagram (for naming only)."""
    found, offset = [], 0
    while offset + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, offset)
        found.append(kind)
        if length < 16:
            break
        offset += (length + 3) & ~3
    return found


NAMES = {0x10: "newsa", 0x11: "delsa", 0x13: "newpolicy", 0x14: "delpolicy", 0x16: "allocspi", 0x17: "acquire",
         0x18: "expire", 0x19: "updpolicy", 0x1a: "updsa", 0x1b: "polexpire", 0x1c: "flushsa", 0x1d: "flushpolicy",
         0x1e: "newae", 0x1f: "getae", 0x20: "report", NLMSG_ERROR: "error", NLMSG_DONE: "done"}


def name(data):
    kinds = types(data)
    first = NAMES.get(kinds[0], f"type{kinds[0]}") if kinds else "empty"
    return first if len(kinds) == 1 else f"{first}-x{len(kinds)}"


monitor = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
monitor.bind((0, 0x1 | 0x2 | 0x4 | 0x8))  # XFRMGRP_ACQUIRE, EXPIRE, SA, POLICY
monitor.settimeout(0.2)


def drain_events(wait=0.3):
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            data = monitor.recv(1 << 16)
        except socket.timeout:
            continue
        save("event-" + name(data), data)


requests = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
requests.bind((0, 0))
requests.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
requests.settimeout(2)
sequence = 100


def request(kind, flags, payload, what):
    """Sends one request; saves every reply datagram until the ack, error or dump end."""
    global sequence
    sequence += 1
    requests.send(struct.pack("=IHHII", 16 + len(payload), kind, flags, sequence, 0) + payload)
    while True:
        data = requests.recv(1 << 16)
        save(what + "-" + name(data), data)
        kinds = types(data)
        if NLMSG_DONE in kinds or NLMSG_ERROR in kinds:
            return data


def dumps(what):
    request(XFRM_MSG_GETSA, NLM_F_REQUEST | NLM_F_DUMP, b"", "dump-states-" + what)
    request(XFRM_MSG_GETPOLICY, NLM_F_REQUEST | NLM_F_DUMP, b"", "dump-policies-" + what)


# A veth end, not lo: the loopback device has disable_xfrm set, so no ACQUIRE would come from it.
ip("link", "set", "lo", "up")
ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
ip("link", "set", "v0", "up")
ip("link", "set", "v1", "up")
ip("addr", "add", "10.0.0.1/24", "dev", "v0")
ip("addr", "add", "fd00::1/64", "dev", "v0", "nodad")
with open("/proc/sys/net/core/xfrm_acq_expires", "w") as f:
    f.write("2")

key20 = "0x" + "11" * 20
key16, key32 = "0x" + "22" * 16, "0x" + "33" * 32
# States: AEAD with a port selector; CBC + truncated HMAC in tunnel mode with UDP encapsulation, a mark and ESN;
# IPv6 AEAD; AH; IPComp; one with a short lifetime (soft and hard EXPIRE).
ip("xfrm", "state", "add", "src", "10.0.0.1", "dst", "10.0.0.2", "proto", "esp", "spi", "0x1000", "reqid", "7",
   "mode", "transport", "replay-window", "32", "aead", "rfc4106(gcm(aes))", key20, "128",
   "sel", "src", "10.0.0.1", "dst", "10.0.0.2", "proto", "tcp", "sport", "5000", "dport", "6000")
drain_events()
ip("xfrm", "state", "add", "src", "10.0.0.1", "dst", "10.0.0.3", "proto", "esp", "spi", "0x2000", "reqid", "8",
   "mode", "tunnel", "flag", "esn", "replay-window", "128", "enc", "cbc(aes)", key16,
   "auth-trunc", "hmac(sha256)", key32, "128", "encap", "espinudp", "4500", "4500", "0.0.0.0",
   "mark", "0x10", "mask", "0xff")
drain_events()
ip("xfrm", "state", "add", "src", "fd00::1", "dst", "fd00::2", "proto", "esp", "spi", "0x3000", "reqid", "9",
   "mode", "transport", "aead", "rfc4106(gcm(aes))", key20, "96")
drain_events()
ip("xfrm", "state", "add", "src", "10.0.0.1", "dst", "10.0.0.4", "proto", "ah", "spi", "0x4000", "reqid", "10",
   "mode", "transport", "auth", "hmac(sha1)", "0x" + "44" * 20)
drain_events()
if ip("xfrm", "state", "add", "src", "10.0.0.1", "dst", "10.0.0.5", "proto", "comp", "spi", "0x5000",
      "mode", "transport", "comp", "deflate", check=False):
    drain_events()
ip("xfrm", "state", "update", "src", "10.0.0.1", "dst", "10.0.0.2", "proto", "esp", "spi", "0x1000", "reqid", "7",
   "mode", "transport", "replay-window", "64", "aead", "rfc4106(gcm(aes))", key20, "128",
   "sel", "src", "10.0.0.1", "dst", "10.0.0.2", "proto", "tcp", "sport", "5000", "dport", "6000")
drain_events()

# Policies: out with a template and a mark; IPv6 in with two templates; a blocking fwd policy; an updated one.
ip("xfrm", "policy", "add", "src", "10.0.0.1/32", "dst", "10.0.0.2/32", "proto", "udp", "dport", "7000", "dir", "out",
   "priority", "100", "mark", "0x5", "mask", "0xf", "tmpl", "src", "10.0.0.1", "dst", "10.0.0.2", "proto", "esp",
   "mode", "transport", "reqid", "7", "level", "required")
drain_events()
ip("xfrm", "policy", "add", "src", "fd00::2/128", "dst", "fd00::1/128", "dir", "in", "tmpl", "proto", "ah",
   "mode", "transport", "level", "use", "tmpl", "proto", "esp", "mode", "transport", "reqid", "9")
drain_events()
ip("xfrm", "policy", "add", "src", "10.0.0.0/24", "dst", "10.0.0.0/24", "dir", "fwd", "action", "block")
drain_events()
ip("xfrm", "policy", "update", "src", "10.0.0.0/24", "dst", "10.0.0.0/24", "dir", "fwd", "action", "allow",
   "priority", "5")
drain_events()

dumps("full")

# A get of one state (reply and ack) and of one that does not exist (an error).
state_id = socket.inet_pton(socket.AF_INET, "10.0.0.2") + bytes(12) + struct.pack("!I", 0x1000)
request(XFRM_MSG_GETSA, NLM_F_REQUEST | NLM_F_ACK, state_id + struct.pack("=HBB", socket.AF_INET, 50, 0) + bytes(0),
        "get-state")
missing = socket.inet_pton(socket.AF_INET, "10.0.0.9") + bytes(12) + struct.pack("!I", 0x9999)
request(XFRM_MSG_GETSA, NLM_F_REQUEST | NLM_F_ACK, missing + struct.pack("=HBB", socket.AF_INET, 50, 0),
        "get-missing-state")

# The kernel's extended-ack text: a captured NEWSA sent back with an algorithm the kernel does not know,
# once echoing the request and once with NETLINK_CAP_ACK (header only).
newsa = open(os.path.join(out, "event-newsa-1"), "rb").read()
payload = newsa[16:].replace(b"rfc4106(gcm(aes))", b"rfc4106(gcm(xyz))")
request(XFRM_MSG_NEWSA, NLM_F_REQUEST | NLM_F_ACK | 0x400 | 0x200, payload, "bad-algorithm")
requests.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
request(XFRM_MSG_NEWSA, NLM_F_REQUEST | NLM_F_ACK | 0x400 | 0x200, payload, "bad-algorithm-capped")
requests.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 0)

# ACQUIRE: a required policy with no SA, and a UDP datagram it covers (a larval state appears, then expires).
ip("xfrm", "policy", "add", "src", "10.0.0.1/32", "dst", "10.0.0.7/32", "proto", "udp", "dir", "out",
   "tmpl", "src", "10.0.0.1", "dst", "10.0.0.7", "proto", "esp", "mode", "transport", "reqid", "11")
drain_events()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("10.0.0.1", 0))
try:
    udp.sendto(b"x", ("10.0.0.7", 7000))
except OSError:
    pass
drain_events(0.5)
dumps("larval")

# Expiry: a state and a policy with short lifetimes.
ip("xfrm", "state", "add", "src", "10.0.0.1", "dst", "10.0.0.6", "proto", "esp", "spi", "0x6000", "mode",
   "transport", "aead", "rfc4106(gcm(aes))", key20, "128", "limit", "time-soft", "1", "limit", "time-hard", "2")
ip("xfrm", "policy", "add", "src", "10.0.0.6/32", "dst", "10.0.0.1/32", "dir", "in", "limit", "time-soft", "1",
   "limit", "time-hard", "2")
drain_events(4)

# Deletions and flushes.
ip("xfrm", "state", "delete", "src", "10.0.0.1", "dst", "10.0.0.3", "proto", "esp", "spi", "0x2000", "mark", "0x10",
   "mask", "0xff")
drain_events()
ip("xfrm", "policy", "delete", "src", "fd00::2/128", "dst", "fd00::1/128", "dir", "in")
drain_events()
ip("xfrm", "state", "flush")
drain_events()
ip("xfrm", "policy", "flush")
drain_events()
dumps("empty")

print(" ".join(f"{k}:{v}" for k, v in sorted(counts.items())))
