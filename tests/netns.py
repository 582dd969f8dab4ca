"""Three hosts on one machine: a network namespace per replica, joined by veth pairs to a bridge.

   root namespace (the test's clients, CLIENT address)
        | veth
   switch namespace: bridge
        | veth   | veth   | veth
       h1       h2       h3        one replica each, on its own address

Everything is created by `Network.create` and removed by `Network.destroy`
(deleting a namespace deletes its ends of the veth pairs). Only the addresses of
this private /24 and loopback are used. Faults are the kernel's: a link set
down, nftables rules that drop (all, or a random share of packets), and tc
netem where the kernel has it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field

CMD_TIMEOUT_S = 10.0
HOSTS = 3


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one ip/nft/tc command; raise with its stderr when `check` and it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT_S, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def unavailable() -> str:
    """Why this machine cannot build the network ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (.ci/run installs iproute2 and nftables)"
    probe = f"gmprobe{os.getpid()}"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        veth = run("ip", "-n", probe, "link", "add", "p0", "type", "veth", "peer", "name", "p1", check=False)
        if veth.returncode != 0:
            return f"cannot create veth pairs: {veth.stderr.strip()}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return ""


@dataclass
class Network:
    """The namespaces, links and addresses of one test; `destroy` removes all of it."""

    tag: str
    subnet: str  # the first three octets, e.g. "10.213.7"
    created: list[str] = field(default_factory=list)

    @classmethod
    def for_this_process(cls) -> Network:
        pid = os.getpid()
        return cls(tag=f"gm{pid % 100000}", subnet=f"10.{200 + pid % 50}.{(pid // 50) % 250}")

    def ns(self, i: int) -> str:
        """The namespace of host i (1-based)."""
        return f"{self.tag}h{i}"

    @property
    def switch(self) -> str:
        return f"{self.tag}sw"

    def address(self, i: int) -> str:
        """Host i's address."""
        return f"{self.subnet}.{i}"

    @property
    def client_address(self) -> str:
        return f"{self.subnet}.100"

    @property
    def client_link(self) -> str:
        return f"{self.tag}c"

    def create(self) -> None:
        """Namespaces, bridge, veth pairs, addresses; all links up."""
        for name in (self.switch, *(self.ns(i) for i in range(1, HOSTS + 1))):
            run("ip", "netns", "add", name)
            self.created.append(name)
            run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        for i in range(1, HOSTS + 1):
            # made inside the switch namespace, one end moved to the host: no names in the root namespace
            run("ip", "-n", self.switch, "link", "add", f"s{i}", "type", "veth", "peer", "name", "eth0")
            run("ip", "-n", self.switch, "link", "set", "eth0", "netns", self.ns(i))
            run("ip", "-n", self.switch, "link", "set", f"s{i}", "master", "br0", "up")
            run("ip", "-n", self.ns(i), "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
            run("ip", "-n", self.ns(i), "link", "set", "eth0", "up")
        # the clients: one veth from the root namespace into the switch
        run("ip", "-n", self.switch, "link", "add", "sc", "type", "veth", "peer", "name", self.client_link)
        run("ip", "-n", self.switch, "link", "set", self.client_link, "netns", "1")
        run("ip", "-n", self.switch, "link", "set", "sc", "master", "br0", "up")
        run("ip", "addr", "add", f"{self.client_address}/24", "dev", self.client_link)
        run("ip", "link", "set", self.client_link, "up")

    def destroy(self) -> None:
        """Remove what `create` made (processes in the namespaces must be stopped first)."""
        run("ip", "link", "del", self.client_link, check=False)
        for name in reversed(self.created):
            run("ip", "netns", "del", name, check=False)
        self.created.clear()

    # --- faults -------------------------------------------------------------

    def link(self, i: int, *, up: bool) -> None:
        """Host i's network cable in or out."""
        run("ip", "-n", self.ns(i), "link", "set", "eth0", "up" if up else "down")

    def drop(self, i: int, *, peers: list[int] | None = None, percent: int = 100) -> None:
        """Host i drops `percent` of packets (all, or only those to and from `peers`)."""
        ns = self.ns(i)
        self.heal(i)
        run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "fault")
        for chain, direction in (("in", "input"), ("out", "output")):
            spec = f"{{ type filter hook {direction} priority 0; }}"
            run("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "fault", chain, spec)
            match: list[str] = []
            if peers is not None:
                field_ = "saddr" if chain == "in" else "daddr"
                match = ["ip", field_, "{", ", ".join(self.address(p) for p in peers), "}"]
            if percent < 100:
                match += ["numgen", "random", "mod", "100", "<", str(percent)]
            run("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "fault", chain, *match, "drop")

    def heal(self, i: int) -> None:
        """Remove host i's drop rules (if any)."""
        run("ip", "netns", "exec", self.ns(i), "nft", "delete", "table", "inet", "fault", check=False)

    def netem(self, i: int, spec: str) -> bool:
        """Add tc netem (e.g. "delay 20ms loss 5%") on host i; False where the kernel has no netem."""
        done = run("ip", "netns", "exec", self.ns(i), "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                   *spec.split(), check=False)  # fmt: skip
        return done.returncode == 0

    def clear_netem(self, i: int) -> None:
        run("ip", "netns", "exec", self.ns(i), "tc", "qdisc", "del", "dev", "eth0", "root", check=False)
