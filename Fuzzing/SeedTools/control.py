#!/usr/bin/env python3
"""Writes hand-made seeds for the `control` fuzz target (the keying daemon's control protocol, see
Sources/DaemonControl/ControlMessage.swift): one frame per message kind, encoded as the protocol says (header
"WSSD", version 1, kind, two zero bytes, the request id; little-endian fields). Usage: control.py OUTDIR
"""
import os
import struct
import sys


def frame(kind, ident, body=b""):
    return b"WSSD" + struct.pack("<BBHI", 1, kind, 0, ident) + body


def string(text):
    data = text.encode()
    return struct.pack("<H", len(data)) + data


def endpoint(address, port):
    return struct.pack("<H", len(address)) + bytes(address) + struct.pack("<H", port)


def sa_report():
    return (string("src 10.0.0.1 dst 10.0.0.2 proto esp spi 0xc0000001") + string("10.0.0.1") + string("10.0.0.2")
            + struct.pack("<II", 0xc0000001, 7) + struct.pack("<H", 1) + string("rfc4106(gcm(aes))")
            + struct.pack("<QQ", 1234, 5))


def inspected_endpoint():
    owner = b"\x01" + struct.pack("<iII", 41, 65534, 65534)
    return (owner + struct.pack("<Qi", 1, 5) + string("inet") + string("tcp") + b"\x01" + struct.pack("<I", 7)
            + string("accepted") + string("secured (peer b.example)") + b"\x01" + string("b.example") + b"\x00"
            + struct.pack("<H", 1) + string("*") + string("host/b.example") + string("ipsec default")
            + b"\x01" + struct.pack("<H", 27015) + b"\x01" + string("in 0xc0000001 out 0xc0000002")
            + struct.pack("<H", 1) + sa_report())


seeds = {
    "hello": frame(1, 1, bytes([1, 1])),
    "set-security-default": frame(2, 2, struct.pack("<II", 0, 0) + b"\x00"),
    "set-security-ipsec": frame(2, 3, struct.pack("<II", 1, 1) + b"\x01" + struct.pack("<I", 4)
                                + b"\x00\x00" + b"\x01" + string("alice") + b"\x00" + b"\x01" + string("secret")),
    "set-peer-target-name": frame(3, 4, struct.pack("<I", 0) + b"\x01" + endpoint([10, 0, 0, 2], 0)
                                  + string("host/b.example")),
    "delete-peer-target-name": frame(4, 5, endpoint([0xfd] + [0] * 14 + [2], 9)),
    "prepare-connect": frame(5, 6, endpoint([10, 0, 0, 2], 27015) + struct.pack("<I", 10000)),
    "query-none": frame(6, 7, b"\x00"),
    "query-template": frame(6, 8, b"\x01" + struct.pack("<I", 2) + b"\x00" + struct.pack("<III", 1, 0, 3)),
    "release": frame(7, 9),
    "lent": frame(8, 0x80000001, struct.pack("<Q", 42) + b"\x01"),
    "welcome": frame(64, 1, b"\x01" + struct.pack("<i", 1234)),
    "done": frame(65, 2),
    "secured": frame(66, 2, struct.pack("<Q", 5)),
    "connect-ready": frame(67, 6, struct.pack("<I", 9000)),
    "query-info": frame(68, 7, struct.pack("<II", 1, 3) + b"\x01" + string("b.example") + b"\x00"
                        + b"\x01" + b"\x01" + string("b.example") + b"\x00" + struct.pack("<H", 0)
                        + struct.pack("<H", 0) + b"\x00" + b"\x01" + string("certificate")
                        + struct.pack("<QQI", 7, 9, 0) + b"\x00" + b"\x00" + b"\x01" + string("rfc4106(gcm(aes))")),
    "failure": frame(69, 3, struct.pack("<ii", 10013, 13) + string("uid 65533 may not use the keying daemon")),
    "lend": frame(70, 0x80000002, struct.pack("<Q", 77)),
    "inspect": frame(9, 10),
    "follow": frame(10, 11),
    "resecure": frame(11, 12, struct.pack("<II", 0, 1) + b"\x00" + struct.pack("<H", 1)
                      + struct.pack("<I", 0) + b"\x00" + string("host/a.example")),
    "inspection": frame(71, 10, struct.pack("<i", 12) + string("strongswan") + struct.pack("<I", 2)
                        + struct.pack("<H", 1) + inspected_endpoint() + b"\x01"),
    "inspection-event": frame(72, 11, string("sa-added") + inspected_endpoint() + b"\x01" + sa_report()),
}
os.makedirs(sys.argv[1], exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(sys.argv[1], f"hand-{name}"), "wb") as out:
        out.write(data)
