"""The original client, in its own process: generated from the original proto and nothing else.

    python original_client.py GEN_DIR SERVERS send ID FROM TO TEXT
    python original_client.py GEN_DIR SERVERS receive ADDRESS

It imports only the code generated into GEN_DIR (from legacy_proto/messenger.proto),
loops over one stub per server as the original client did, and prints JSON.
"""

import json
import sys

import grpc

sys.path.insert(0, sys.argv[1])  # the code generated from the original proto, not grpc_messenger

import messenger_pb2
import messenger_pb2_grpc


def send_to_all(stubs, msg_id, sender, recipient, text):
    request = messenger_pb2.SendRequest(id=msg_id, msg=text, self_email=sender, dest_email=recipient)
    return [stub.Send(request, timeout=10).success for stub in stubs]


def receive_from_all(stubs, address):
    inboxes = []
    for stub in stubs:
        response = stub.ReceiveAll(messenger_pb2.ReceiveRequest(self_email=address), timeout=10)
        inboxes.append([[m.id, m.msg, m.self_email, m.dest_email] for m in response.messages])
    return inboxes


def main():
    servers = sys.argv[2].split(",")
    action = sys.argv[3]
    channels = [grpc.insecure_channel(s) for s in servers]
    stubs = [messenger_pb2_grpc.MessengerServiceStub(c) for c in channels]
    if action == "send":
        msg_id, sender, recipient, text = int(sys.argv[4]), sys.argv[5], sys.argv[6], sys.argv[7]
        print(json.dumps(send_to_all(stubs, msg_id, sender, recipient, text)))
    elif action == "receive":
        print(json.dumps(receive_from_all(stubs, sys.argv[4])))
    for c in channels:
        c.close()


if __name__ == "__main__":
    main()
