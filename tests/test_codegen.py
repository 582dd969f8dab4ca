"""The committed protobuf code is exactly what the .proto generates, and the wire stays seed-compatible."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

from grpc_messenger.proto import messenger_pb2 as pb

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_up_to_date() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_original_fields_and_rpcs_are_unchanged() -> None:
    """Field numbers, types and names of the seed protocol, read from our descriptor."""
    file = descriptor_pb2.FileDescriptorProto()
    pb.DESCRIPTOR.CopyToProto(file)
    assert file.package == "messenger"
    fields = {m.name: {f.number: (f.name, f.type, f.label) for f in m.field} for m in file.message_type}
    t = descriptor_pb2.FieldDescriptorProto
    opt, rep = t.LABEL_OPTIONAL, t.LABEL_REPEATED
    seed = {
        "SendRequest": {1: ("id", t.TYPE_INT32, opt), 2: ("msg", t.TYPE_STRING, opt),
                        3: ("self_email", t.TYPE_STRING, opt), 4: ("dest_email", t.TYPE_STRING, opt)},
        "SendResponse": {1: ("success", t.TYPE_BOOL, opt), 2: ("debug_message", t.TYPE_STRING, opt)},
        "ReceiveRequest": {1: ("self_email", t.TYPE_STRING, opt)},
        "InboxResponse": {1: ("messages", t.TYPE_MESSAGE, rep)},
    }  # fmt: skip
    for message, expected in seed.items():
        for number, shape in expected.items():
            assert fields[message][number] == shape, (message, number)
    (service,) = [s for s in file.service if s.name == "MessengerService"]
    methods = {m.name: (m.input_type, m.output_type, m.server_streaming) for m in service.method}
    assert methods["Send"] == (".messenger.SendRequest", ".messenger.SendResponse", False)
    assert methods["ReceiveAll"] == (".messenger.ReceiveRequest", ".messenger.InboxResponse", False)
