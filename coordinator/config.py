"""The deployment config: the original design's JSON, camelCase keys and all.

Times are milliseconds.  A node's own values override `model`'s.  Missing
keys get defaults, so a partial config works.  A bad config raises
ConfigError naming the key and the problem (and the line, for broken JSON).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from styxfs import dial
from styxfs.llama.settings import DEFAULT_LISTEN, HTTP_PORT, NODE, REQUEST_TIMEOUT


class ConfigError(ValueError):
    pass


class LoadBalancingStrategy(str, enum.Enum):
    RoundRobin = "round-robin"
    LeastConnections = "least-connections"
    Random = "random"
    WeightedRandom = "weighted-random"
    PrefixAffinity = "prefix-affinity"

    def __str__(self) -> str:
        return self.value


STRATEGIES = [s.value for s in LoadBalancingStrategy]


# The config's names for the node's options (styxfs.llama.settings.NODE).
NODE_KEYS = {"contextSize": "ctx", "gpuLayers": "gpulayers", "batchSize": "batch", "threads": "threads"}


@dataclass
class ModelConfig:
    contextSize: int = NODE["ctx"].default
    gpuLayers: int = NODE["gpulayers"].default
    batchSize: int = NODE["batch"].default
    threads: int = NODE["threads"].default
    mlock: bool = False
    chatTemplateFile: str | None = None  # in place of the model's own template


@dataclass
class NetworkConfig:
    loadBalancing: str = "round-robin"
    healthCheckInterval: int = 30000
    requestTimeout: int = int(REQUEST_TIMEOUT * 1000)
    enableFailover: bool = True
    basePort: int = 8000
    listen: str = DEFAULT_LISTEN
    sessionTimeout: int = int(NODE["sessiontimeout"].default * 1000)  # an idle session's life on the coordinator
    maxSessions: int = 1024  # sessions the coordinator holds at once
    http: str | None = None  # where the coordinator serves /metrics, /api/status and the dashboard


@dataclass
class NodeConfig:
    id: str
    address: str = "localhost"
    port: int = 8000
    weight: float = 1.0
    gpuLayers: int | None = None
    contextSize: int | None = None
    threads: int | None = None
    batchSize: int | None = None

    @property
    def dial(self) -> str:
        host = "127.0.0.1" if self.address == "localhost" else self.address
        return f"tcp!{host}!{self.port}"

    @property
    def is_local(self) -> bool:
        return self.address in ("localhost", "::1") or self.address.startswith("127.")


@dataclass
class DeploymentConfig:
    name: str = "llamafs"
    modulePath: str = "/dis/deployment/llamacpp.dis"
    modelPath: str | None = None  # None: the default model
    modelsDir: str | None = None
    isolation: str = "process"
    authSecretFile: str | None = None  # shared-secret authentication, coordinator and nodes
    owner: str | None = None  # who may write the root ctl and see nodes/ (default: who runs it)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    nodes: list[NodeConfig] = field(default_factory=list)
    model: ModelConfig = field(default_factory=ModelConfig)

    def node_value(self, node: NodeConfig, key: str):
        """A node's own value, else the model section's."""
        own = getattr(node, key, None)
        return own if own is not None else getattr(self.model, key)

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        for node in data["nodes"]:
            for key in [k for k, v in node.items() if v is None]:
                del node[key]
        return data

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "DeploymentConfig":
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: line {e.lineno} column {e.colno}: broken JSON: {e.msg}") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "DeploymentConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the config must be a JSON object")
        check = _Checker(where)
        config = cls(
            name=check.string(data, "name", "llamafs"),
            modulePath=check.string(data, "modulePath", "/dis/deployment/llamacpp.dis"),
            modelPath=check.string(data, "modelPath", None),
            modelsDir=check.string(data, "modelsDir", None),
            isolation=check.choice(data, "isolation", "process", ["process", "dis"]),
            authSecretFile=check.string(data, "authSecretFile", None),
            owner=check.string(data, "owner", None),
        )
        net = check.section(data, "network")
        config.network = NetworkConfig(
            loadBalancing=check.choice(net, "network.loadBalancing", "round-robin", STRATEGIES),
            healthCheckInterval=check.integer(net, "network.healthCheckInterval", 30000, 1, 86_400_000),
            requestTimeout=check.integer(net, "network.requestTimeout", NetworkConfig.requestTimeout, 1,
                                         86_400_000),
            enableFailover=check.boolean(net, "network.enableFailover", True),
            basePort=check.integer(net, "network.basePort", 8000, 1, 65535),
            listen=check.string(net, "network.listen", DEFAULT_LISTEN),
            sessionTimeout=check.integer(net, "network.sessionTimeout", NetworkConfig.sessionTimeout,
                                         int(NODE["sessiontimeout"].low * 1000), int(NODE["sessiontimeout"].high * 1000)),
            maxSessions=check.integer(net, "network.maxSessions", 1024, 1, 1_000_000),
            http=check.http_address(net, "network.http"),
        )
        model = check.section(data, "model")
        config.model = ModelConfig(**{key: check.node_option(model, f"model.{key}", NODE[option].default, option)
                                      for key, option in NODE_KEYS.items()},
                                   mlock=check.boolean(model, "model.mlock", False),
                                   chatTemplateFile=check.string(model, "model.chatTemplateFile", None))
        nodes = data.get("nodes", [])
        if not isinstance(nodes, list):
            raise ConfigError(f"{where}: nodes: must be a list")
        ids, ports = set(), set()
        for i, node in enumerate(nodes):
            key = f"nodes[{i}]"
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key}: must be an object")
            base = config.network.basePort
            n = NodeConfig(
                id=check.string(node, f"{key}.id", f"node-{i}"),
                address=check.string(node, f"{key}.address", "localhost"),
                port=check.integer(node, f"{key}.port", base + i, 1, 65535),
                weight=check.number(node, f"{key}.weight", 1.0, 0.0, 1e9),
                **{name: check.node_option(node, f"{key}.{name}", None, option) for name, option in NODE_KEYS.items()},
            )
            if n.id in ids:
                raise ConfigError(f"{where}: {key}.id: duplicate node id {n.id!r}")
            if (n.address, n.port) in ports or (n.is_local and ("local", n.port) in ports):
                raise ConfigError(f"{where}: {key}.port: duplicate port {n.port} on {n.address}")
            ids.add(n.id)
            ports.add((n.address, n.port))
            if n.is_local:
                ports.add(("local", n.port))
            config.nodes.append(n)
        return config


class _Checker:
    def __init__(self, where: str):
        self.where = where

    def fail(self, key: str, problem: str):
        raise ConfigError(f"{self.where}: {key}: {problem}")

    def section(self, data: dict, key: str) -> dict:
        value = data.get(key, {})
        if not isinstance(value, dict):
            self.fail(key, "must be an object")
        return value

    def _get(self, data: dict, key: str):
        return data.get(key.rsplit(".", 1)[-1])

    def string(self, data, key, default):
        value = self._get(data, key)
        if value is None:
            return default
        if not isinstance(value, str) or not value:
            self.fail(key, f"must be a non-empty string, not {json.dumps(value)}")
        return value

    def http_address(self, data, key):
        value = self.string(data, key, None)
        if value is None:
            return None
        try:
            address = dial.parse(value, HTTP_PORT)
        except ValueError as e:
            self.fail(key, str(e))
        if address.network != "tcp":
            self.fail(key, f"HTTP listens on tcp only, not {value!r}")
        return str(address)

    def choice(self, data, key, default, choices):
        value = self.string(data, key, default)
        if value not in choices:
            self.fail(key, f"unknown value {value!r}: use one of {', '.join(choices)}")
        return value

    def boolean(self, data, key, default):
        value = self._get(data, key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, f"must be true or false, not {json.dumps(value)}")
        return value

    def number(self, data, key, default, low, high):
        value = self._get(data, key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"must be a number, not {json.dumps(value)}")
        if value < low:
            self.fail(key, f"{value} is negative" if low == 0 else f"{value} is below {low}")
        if value > high:
            self.fail(key, f"{value} is out of range (at most {high})")
        return value

    def node_option(self, data, key, default, option: str):
        """A node option, in the range settings.NODE gives it."""
        return self.integer(data, key, default, NODE[option].low, NODE[option].high)

    def integer(self, data, key, default, low, high):
        value = self.number(data, key, default, low, high)
        if value is not None and value != int(value):
            self.fail(key, f"must be a whole number, not {value}")
        if key.endswith("port") and value is not None and not 1 <= value <= 65535:
            self.fail(key, f"port {value} out of range")
        return None if value is None else int(value)


def generate(model: str | None, nodes: int, strategy: str = "round-robin", base_port: int = 8000,
             name: str = "llamafs-deployment") -> DeploymentConfig:
    """A config with N nodes on localhost, ports basePort+i."""
    config = DeploymentConfig(name=name, modelPath=model)
    config.network.loadBalancing = strategy
    config.network.basePort = base_port
    config.nodes = [NodeConfig(id=f"node-{i}", address="localhost", port=base_port + i) for i in range(nodes)]
    return DeploymentConfig.from_dict(config.to_dict())  # checked as a loaded file would be
