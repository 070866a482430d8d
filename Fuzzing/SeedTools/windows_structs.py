#!/usr/bin/env python3
"""Writes the seeds of the `windows-structs` fuzz target: Windows structs as C callers lay them out (x86-64 Linux,
CModules/CSecureSocketABI/include/wsa_types.h), each behind the target's selector byte (low bits: 0 settings,
1 peer target name, 2 sockaddr, 3 query template; 0x40 odd address; 0x80 NULL pointer). Usage: OUTDIR."""
import os
import socket
import struct
import sys
import uuid

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
DEFAULT, IPSEC, IPSEC2 = 0, 1, 2
SETTINGS, PEER_NAME, ADDRESS, QUERY = 0, 1, 2, 3


def write(name, selector, body):
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([selector]) + body)


def utf16(text):
    return text.encode("utf-16-le")


def sockaddr_in(address, port):
    return (struct.pack("<H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_pton(socket.AF_INET, address)
            + bytes(8))


def sockaddr_in6(address, port, scope=0):
    return (struct.pack("<H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, address) + struct.pack("<I", scope))


def storage(sockaddr=b""):
    return sockaddr + bytes(128 - len(sockaddr))


def ipsec_settings(flags, ipsec_flags, user="", domain="", password="", mm=None, qm=None):
    """SOCKET_SECURITY_SETTINGS_IPSEC: 84 bytes of header, then the UTF-16 strings (at least 88 bytes in all)."""
    strings = [utf16(s) for s in (user, domain, password)]
    header = struct.pack("<III", IPSEC, flags, ipsec_flags)
    header += (mm or uuid.UUID(int=0)).bytes_le + (qm or uuid.UUID(int=0)).bytes_le + bytes(16)  # Reserved GUID
    header += bytes(4) + struct.pack("<Q", 0)  # padding to 8, Reserved2
    header += struct.pack("<III", *(len(s) for s in strings))
    assert len(header) == 84
    body = header + b"".join(strings)
    return body + bytes(max(0, 88 - len(body)))


def peer_target_name(name, sockaddr=b"", characters=False, protocol=IPSEC):
    units = utf16(name)
    declared = len(units) // 2 if characters else len(units)
    body = struct.pack("<I", protocol) + bytes(4) + storage(sockaddr) + struct.pack("<I", declared) + units
    return body + bytes(4) if characters else body  # Microsoft's sample: sizeof (144) + 2 * characters


def query_template(protocol, sockaddr=b"", access=0, flags=None, mask=None):
    body = struct.pack("<I", protocol) + bytes(4) + storage(sockaddr) + struct.pack("<I", access)
    if flags is None:
        return body + bytes(4)
    return body + struct.pack("<II", flags, mask) + bytes(4)  # padded to 152


write("settings-default", SETTINGS, struct.pack("<II", DEFAULT, 0))
write("settings-default-guarantee", SETTINGS, struct.pack("<II", DEFAULT, 1))
write("settings-ipsec-short", SETTINGS, struct.pack("<II", IPSEC, 2))
write("settings-null", SETTINGS | 0x80, b"")
write("settings-ipsec-empty", SETTINGS, ipsec_settings(1, 0))
write("settings-ipsec-user", SETTINGS, ipsec_settings(1, 0x2, "alice", "EXAMPLE", "s3cret"))
write("settings-ipsec-raw-name-keys", SETTINGS | 0x40,
      ipsec_settings(1, 0x8, user="bob", password="pw", mm=uuid.UUID("11111111-2222-3333-4444-555555555555"),
                     qm=uuid.UUID("66666666-7777-8888-9999-aaaaaaaaaaaa")))
write("settings-ipsec2", SETTINGS, struct.pack("<II", IPSEC2, 0))
write("peer-name-bytes", PEER_NAME, peer_target_name("host/b.example"))
write("peer-name-characters", PEER_NAME, peer_target_name("host/b.example", characters=True))
write("peer-name-ipv4", PEER_NAME, peer_target_name("b.example", sockaddr_in("10.77.0.2", 5001)))
write("peer-name-ipv6", PEER_NAME | 0x40, peer_target_name("b.example", sockaddr_in6("fd00::2", 500)))
write("peer-name-nul-terminated", PEER_NAME, peer_target_name("b.example\0", protocol=DEFAULT))
write("address-ipv4", ADDRESS, sockaddr_in("10.77.0.2", 5001))
write("address-ipv6", ADDRESS | 0x40, sockaddr_in6("fd00::2", 5001, scope=2))
write("address-unix", ADDRESS, struct.pack("<H", socket.AF_UNIX) + b"/tmp/x\0")
write("query-default", QUERY, query_template(DEFAULT))
write("query-ipsec-ipv6", QUERY, query_template(IPSEC, sockaddr_in6("fd00::2", 5001), access=0x20000))
write("query-ipsec2-ipv4", QUERY | 0x40, query_template(IPSEC2, sockaddr_in("10.77.0.2", 5001), flags=1, mask=3))
write("query-ipsec2-short", QUERY, query_template(IPSEC2))
