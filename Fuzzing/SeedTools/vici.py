#!/usr/bin/env python3
"""Captures VICI packets from real charons as seeds for the `vici` fuzz target.

Run as root on a kernel with ESP (Fuzzing/SeedTools/capture.sh runs it under user-mode-linux): two private charons
in two network namespaces joined by veth, configured over VICI with a pre-shared key and a transport-mode conn;
one initiates, both list their SAs, one terminates. Every packet charon sends (responses, events, CMD_UNKNOWN,
EVENT_CONFIRM, EVENT_UNKNOWN, errors) and every request sent is written to OUTDIR: `packet-*` holds a packet's
data after its length (what VICIPacket.decode reads), `message-*` the element stream of a response or event
(what VICIMessage.decode reads), `stream-*` the first bytes a connection received, lengths included (what
VICIFrameReader reads).
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

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


# --- VICI encoding (strongSwan's src/libcharon/plugins/vici/README.md) ---
def name(text):
    raw = text.encode()
    return bytes([len(raw)]) + raw


def value(v):
    raw = v if isinstance(v, bytes) else str(v).encode()
    return struct.pack("!H", len(raw)) + raw


def message(items):
    """items: list of (key, value); value is a str/int/bytes, a list of them, or a list of (key, value) pairs."""
    data = b""
    for key, v in items:
        if isinstance(v, list) and v and isinstance(v[0], tuple):
            data += b"\x01" + name(key) + message(v) + b"\x02"
        elif isinstance(v, list):
            data += b"\x04" + name(key) + b"".join(b"\x05" + value(i) for i in v) + b"\x06"
        else:
            data += b"\x03" + name(key) + value(v)
    return data


CMD_REQUEST, CMD_RESPONSE, CMD_UNKNOWN, EVENT_REGISTER, EVENT_UNREGISTER, EVENT_CONFIRM, EVENT_UNKNOWN, EVENT = range(8)
TYPES = ["request", "response", "cmd-unknown", "register", "unregister", "confirm", "event-unknown", "event"]


class Client:
    def __init__(self, path, label):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.sock.settimeout(30)
        self.label = label
        self.received = b""

    def send(self, kind, packet_name=None, items=None, what=""):
        data = bytes([kind]) + (name(packet_name) if packet_name is not None else b"") + message(items or [])
        save(f"packet-{TYPES[kind]}-{what}", data)
        self.sock.sendall(struct.pack("!I", len(data)) + data)

    def receive(self, what):
        header = self._read(4)
        data = self._read(struct.unpack("!I", header)[0])
        self.received += header + data
        kind = data[0]
        label = f"{TYPES[kind]}-{what}"
        save("packet-" + label, data)
        if kind in (CMD_RESPONSE, EVENT):
            start = 1 if kind == CMD_RESPONSE else 2 + data[1]
            save("message-" + label, data[start:])
        return kind, data

    def _read(self, count):
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                sys.exit(f"{self.label}: charon closed the connection")
            data += chunk
        return data

    def command(self, command, items=None, stream_event=None):
        """A command; with stream_event, registered around it and its events collected."""
        what = command
        if stream_event:
            self.send(EVENT_REGISTER, stream_event, what=stream_event)
            self.receive(stream_event)
        self.send(CMD_REQUEST, command, items, what=command)
        while True:
            kind, data = self.receive(what)
            if kind != EVENT:
                break
        if stream_event:
            self.send(EVENT_UNREGISTER, stream_event, what=stream_event)
            self.receive(stream_event)
        return data

    def close(self):
        save(f"stream-{self.label}", self.received[:16384])
        self.sock.close()


def run(*args):
    subprocess.run(args, check=True)


PLUGINS = ("random nonce kdf aes sha1 sha2 hmac gmp x509 pem pkcs1 pkcs8 pubkey revocation constraints openssl gcm "
           "curve25519 chapoly eap-identity eap-md5 kernel-netlink socket-default vici")
available = [p for p in PLUGINS.split() if os.path.exists(f"/usr/lib/ipsec/plugins/libstrongswan-{p}.so")]


def start_charon(ns, folder):
    conf = os.path.join(folder, "strongswan.conf")
    socket_path = os.path.join(folder, "charon.vici")
    with open(conf, "w") as f:
        f.write(f"""charon {{
  load_modular = no
  load = {' '.join(available)}
  install_routes = no
  filelog {{
    stderr {{
      default = 1
    }}
  }}
  plugins {{
    vici {{
      socket = unix://{socket_path}
    }}
  }}
}}
""")
    log = open(os.path.join(folder, "charon.log"), "w")
    process = subprocess.Popen(["ip", "netns", "exec", ns, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                                "mount -t tmpfs tmpfs /run && exec /usr/lib/ipsec/charon"],
                               env={"STRONGSWAN_CONF": conf, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                               stdout=log, stderr=log)
    for _ in range(100):
        if os.path.exists(socket_path):
            return process, socket_path
        time.sleep(0.1)
    sys.exit(f"charon in {ns} did not start: {open(os.path.join(folder, 'charon.log')).read()[-2000:]}")


run("ip", "netns", "add", "via")
run("ip", "netns", "add", "vib")
run("ip", "link", "add", "va", "netns", "via", "type", "veth", "peer", "name", "vb", "netns", "vib")
for ns, dev, addr in (("via", "va", "10.9.0.1/24"), ("vib", "vb", "10.9.0.2/24")):
    run("ip", "-n", ns, "link", "set", "lo", "up")
    run("ip", "-n", ns, "link", "set", dev, "up")
    run("ip", "-n", ns, "addr", "add", addr, "dev", dev)

folders = [tempfile.mkdtemp(prefix="vici-capture-") for _ in range(2)]
charon_a, path_a = start_charon("via", folders[0])
charon_b, path_b = start_charon("vib", folders[1])
try:
    a, b = Client(path_a, "a"), Client(path_b, "b")
    a.command("version")
    a.command("stats")
    a.command("no-such-command")
    a.send(EVENT_REGISTER, "no-such-event", what="no-such-event")
    a.receive("no-such-event")
    a.command("get-algorithms")
    for client, me, peer, local, remote in ((a, "a.example", "b.example", "10.9.0.1", "10.9.0.2"),
                                            (b, "b.example", "a.example", "10.9.0.2", "10.9.0.1")):
        client.command("load-shared", [("type", "IKE"), ("data", "fuzz seed secret"), ("owners", [me, peer])])
        client.command("load-conn", [("fuzz", [
            ("version", 2), ("local_addrs", [local]), ("remote_addrs", [remote]),
            ("proposals", ["aes128-sha256-x25519"]),
            ("local", [("auth", "psk"), ("id", me)]), ("remote", [("auth", "psk"), ("id", peer)]),
            ("children", [("sock", [("mode", "transport"), ("reqid", 200), ("start_action", "none"),
                                    ("esp_proposals", ["aes128gcm16"]), ("local_ts", ["dynamic[tcp/5001]"]),
                                    ("remote_ts", ["dynamic[tcp]"])])]),
        ])])
    a.command("load-conn", [("broken", [("proposals", ["no-such-proposal"])])])
    a.command("get-conns")
    a.command("list-conns", stream_event="list-conn")
    a.send(EVENT_REGISTER, "ike-updown", what="ike-updown")
    a.receive("ike-updown")
    a.send(EVENT_REGISTER, "child-updown", what="child-updown")
    a.receive("child-updown")
    a.command("initiate", [("child", "sock"), ("ike", "fuzz"), ("timeout", 10000), ("init-limits", "yes"),
                           ("loglevel", 1)], stream_event="control-log")
    # The up events arrived before the initiate answer; read any still queued.
    a.sock.settimeout(1)
    try:
        while True:
            a.receive("updown")
    except socket.timeout:
        pass
    a.sock.settimeout(30)
    a.command("list-sas", stream_event="list-sa")
    b.command("list-sas", [("noblock", "yes")], stream_event="list-sa")
    b.command("list-certs", stream_event="list-cert")
    a.command("initiate", [("child", "no-such-child")], stream_event="control-log")
    a.command("terminate", [("ike", "fuzz"), ("timeout", 5000)], stream_event="control-log")
    a.sock.settimeout(1)
    try:
        while True:
            a.receive("updown")
    except socket.timeout:
        pass
    a.close()
    b.close()
finally:
    for process in (charon_a, charon_b):
        process.terminate()
        process.wait()
    run("ip", "netns", "del", "via")
    run("ip", "netns", "del", "vib")
print(" ".join(f"{k}:{v}" for k, v in sorted(counts.items())))
