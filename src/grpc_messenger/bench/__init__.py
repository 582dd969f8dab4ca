"""`messenger bench`: every configuration measured side by side in one run.

The suite starts what it needs on loopback (replica processes, bare gRPC
servers, the legacy design, a NATS JetStream cluster), runs a bounded
workload against each, and reports ratios measured in the same run, never
bare absolute numbers. It uses the public client API and the wire protocol
only; it never imports the server package.
"""
