"""Fault injection and a Jepsen-style checker: `messenger chaos`.

A real 3-replica cluster on loopback, a fault-injecting proxy on every link, a
seeded nemesis, a workload over the public client library that records every
operation in a history, and a checker that reads the history afterwards.
"""

from grpc_messenger.chaos.checker import CheckReport, check
from grpc_messenger.chaos.faults import SCENARIOS, Fault, FaultKind, SchedulePlan, plan_schedule
from grpc_messenger.chaos.proxy import FaultProxy, ProxyMode
from grpc_messenger.chaos.runner import ChaosConfig, ChaosResult, run_chaos, schedule_for

__all__ = [
    "SCENARIOS",
    "ChaosConfig",
    "ChaosResult",
    "CheckReport",
    "Fault",
    "FaultKind",
    "FaultProxy",
    "ProxyMode",
    "SchedulePlan",
    "check",
    "plan_schedule",
    "run_chaos",
    "schedule_for",
]
