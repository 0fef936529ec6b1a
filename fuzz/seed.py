#!/usr/bin/env python3
"""Builds the seed corpora of every fuzz target from the golden fixtures
(protocol/tests/fixtures/*.bin) into fuzz/corpus/<target>/. Run from anywhere."""
import json
import struct
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
FIXTURES = FUZZ.parent / "protocol" / "tests" / "fixtures"
CORPUS = FUZZ / "corpus"

# MessageId::ALL_REQUESTS order
REQUESTS = [0x10100101, 0x10100201, 0x10100301, 0x10100401, 0x10100501, 0x10100601, 0x10100701,
            0x10100801, 0x10100901, 0x10100A01, 0x10100B01, 0x10100C01, 0x10100D01, 0x10100E01,
            0x10100F01, 0x10200101]
# response.rs: pick % 8 selects the typed body
RESPONSE_BODY = {0x10100B01: 1, 0x10100101: 2, 0x10100501: 3, 0x10100601: 4, 0x10100901: 5, 0x10100C01: 6}
# modify_settings.rs TYPES order
RESOURCES = ["MappedVirtualDisk", "SCSIDevice", "MappedDirectory", "VPMemDevice", "CombinedLayers",
             "Network", "VPCIDevice", "ContainerConstraints", "SecurityPolicy",
             "SecurityPolicyFragment", "PodCgroupMemoryLimit", "HvSocket", "Unknown"]


def write(target, name, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    files = sorted(FIXTURES.glob("*.bin"))
    if not files:
        sys.exit(f"no fixtures in {FIXTURES}")
    stream = b""
    for f in files:
        frame = f.read_bytes()
        stream += frame
        t, size, _ = struct.unpack("<IIQ", frame[:16])
        payload = frame[16:]
        doc = json.loads(payload)
        write("frame_decoder", f.stem, b"\xff\xff\x2a" + frame)
        kind = t >> 28
        if kind == 1:
            write("request", f.stem, bytes([REQUESTS.index(t)]) + payload)
            if t == 0x10100A01:
                req = doc["Request"]
                i = RESOURCES.index(req["ResourceType"]) if req["ResourceType"] in RESOURCES else 12
                write("modify_settings", f.stem, bytes([i]) + payload)
                if "Settings" in req:
                    write("modify_settings", f.stem + "_settings", bytes([i]) + json.dumps(req["Settings"]).encode())
            if "ContainerConfig" in doc:
                write("json_string", f.stem, b"\x00" + doc["ContainerConfig"].encode())
            if "Settings" in doc and "ProcessParameters" in doc["Settings"]:
                write("json_string", f.stem, b"\x01" + doc["Settings"]["ProcessParameters"].encode())
            if "Query" in doc:
                write("json_string", f.stem, b"\x02" + doc["Query"].encode())
        elif kind == 2:
            req = (t & 0x0FFFFFFF) | 0x10000000
            body = RESPONSE_BODY.get(req, 0) if doc.get("Result", 0) == 0 else 0
            write("response", f.stem, bytes([body]) + payload)
            if "Properties" in doc:
                write("json_string", f.stem, b"\x03" + doc["Properties"].encode())
        else:
            write("response", f.stem, b"\x07" + payload)
    write("frame_decoder", "all_fixtures", b"\xff\xff\x07" + stream)
    print(f"seeded {len(files)} fixtures into {CORPUS}")


if __name__ == "__main__":
    main()
