"""deploy/: the Kubernetes manifests validate offline, and the image and the systemd unit start the
same `messenger serve` the tests start (each command line is run here, on loopback)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from grpc_messenger.launch import ServeProcess
from tests.test_cli import messenger

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES_VERSION = "1.37.0"


def manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in manifests() if d["kind"] == kind]
    return doc


@pytest.mark.parametrize("doc", manifests(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    # the schemas ship inside the package: no network
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_statefulset_runs_three_replicas_behind_a_headless_service_with_probes_and_secrets() -> None:
    sts, service, pdb = by_kind("StatefulSet"), by_kind("Service"), by_kind("PodDisruptionBudget")
    assert sts["spec"]["replicas"] == 3
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "messenger admin health" in " ".join(container[probe]["exec"]["command"])
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"messenger-auth", "messenger-tls"}
    assert [c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]] == ["data"]
    # the grace period outlasts the replica's own --grace
    assert pod["terminationGracePeriodSeconds"] > float(flag(statefulset_argv(), "--grace"))


def statefulset_argv() -> list[str]:
    script = by_kind("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    (line,) = [ln.strip() for ln in script.splitlines() if ln.strip().startswith("exec messenger serve")]
    return shlex.split(line.replace("$PEERS", ""))[1:]


def container_argv() -> list[str]:
    text = (DEPLOY / "Containerfile").read_text()
    entry = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M)[1])  # type: ignore[index]
    cmd = json.loads(re.search(r"^CMD (.+)$", text, re.M)[1])  # type: ignore[index]
    return [*entry, *cmd]


def unit_argv() -> list[str]:
    unit = (DEPLOY / "systemd" / "messenger-replica.service").read_text()
    env = dict(
        line.split("=", 1)
        for line in (DEPLOY / "systemd" / "replica.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    exec_start = re.search(r"^ExecStart=(.+)$", unit, re.M)[1]  # type: ignore[index]
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], exec_start)
    argv = shlex.split(expanded)
    return ["messenger", *argv[1:]] if argv[0].endswith("/messenger") else argv


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def without(argv: list[str], *names: str) -> tuple[str, ...]:
    """argv less the named options and their values."""
    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        else:
            rest.append(arg)
    return tuple(rest)


def test_deployed_command_lines_start_replicas_that_serve_and_drain(tmp_path: Path) -> None:
    sources = {"container": container_argv(), "systemd": unit_argv(), "kubernetes": statefulset_argv()}
    replicas = []
    for source, argv in sources.items():
        if argv[0] == "messenger":
            argv = argv[1:]
        # the tests start replicas as `messenger serve --listen ... --data-dir ... --grace ...` too
        assert argv[0] == "serve", source
        for name in ("--listen", "--data-dir", "--grace"):
            assert name in argv, f"{source} does not pass {name}"
        # started as the tests start every replica, with the host-specific values pointed at loopback
        args = without(argv[1:], "--listen", "--data-dir", "--metrics-listen")
        if "--metrics-listen" in argv:
            args = (*args, "--metrics-listen", "127.0.0.1:0")
        replicas.append(
            ServeProcess(data_dir=tmp_path / source, name=source, log_path=tmp_path / f"{source}.log", args=args)
        )
    try:
        for replica in replicas:  # all three start at once
            replica.spawn()
        for replica in replicas:
            ready = replica.wait_ready()
            health = messenger("admin", "health", "--address", ready.address)
            assert health.returncode == 0, health.stdout + health.stderr
            assert health.stdout.strip() == "SERVING"
        for replica in replicas:
            assert replica.terminate() == 0, replica.name
    finally:
        for replica in replicas:
            replica.kill()
    nobody = messenger("admin", "health", "--address", replicas[0].address, "--timeout", "0.5")
    assert nobody.returncode == 1
    assert nobody.stdout.strip() == "UNAVAILABLE"
