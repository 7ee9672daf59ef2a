"""The deployment config: the original design's JSON, camelCase keys and all.

Times are milliseconds.  A setting is taken from the node's entry, else
from its model's entry in `models`, else from `model`.  Missing keys get
defaults, so a partial config works; `modelPath` alone is one model.  A bad config raises
ConfigError naming the key and the problem (and the line, for broken JSON).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from styxfs import dial
from styxfs.llama.models import DEFAULT as DEFAULT_MODEL
from styxfs.llama.models import NAMED
from styxfs.llama.settings import (CONNECT_TIMEOUT, DEFAULT_LISTEN, HTTP_PORT, NODE, REQUEST_TIMEOUT,
                                   RESTART_POLICIES)

from . import netconfig
from .netconfig import TLSConfig


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
class ModelEntry:
    """One of the models of the `models` section; a None setting is `model`'s."""

    path: str
    contextSize: int | None = None
    gpuLayers: int | None = None
    batchSize: int | None = None
    threads: int | None = None
    mlock: bool | None = None
    chatTemplateFile: str | None = None


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")  # a directory name of models/, a word of ctl


def model_name(path: str | None) -> str:
    """A model's name from its path: a name `serve` knows, else the file's stem."""
    path = path or DEFAULT_MODEL
    return path if path in NAMED else Path(path).stem


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
    restart: str = RESTART_POLICIES[0]  # on-failure, always, never: node processes we started that exit
    connectTimeout: int = int(CONNECT_TIMEOUT * 1000)
    healthTimeout: int | None = None  # None: the check interval, within settings.HEALTH_TIMEOUT
    tls: TLSConfig | None = None  # with it, nodes are dialled over TLS (all but those we start on loopback)
    dns: str | None = None  # HOST:PORT: the DNS server that srv and dns node entries are asked of


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
    model: str | None = None  # a name of `models`; None: the default (first) model
    srv: str | None = None  # nodes found by DNS: an SRV record (host and port per node) ...
    dns: str | None = None  # ... or a name's A/AAAA addresses, each on port (coordinator/discovery.py)

    @property
    def record(self) -> str | None:
        """The DNS record this entry names, if it names one: its nodes are someone else's to run."""
        return self.srv or self.dns

    @property
    def dial(self) -> str:
        host = "127.0.0.1" if self.address == "localhost" else self.address
        return f"tcp!{host}!{self.port}"

    @property
    def is_local(self) -> bool:
        return not self.record and self.address in ("localhost", "::1") or self.address.startswith("127.")


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
    models: dict[str, ModelEntry] = field(default_factory=dict)  # empty: the one model of modelPath

    def model_names(self) -> list[str]:
        """The models served, the default first."""
        return list(self.models) or [model_name(self.modelPath)]

    @property
    def default_model(self) -> str:
        return self.model_names()[0]

    def model_path(self, name: str) -> str | None:
        """The model's path (or a name `serve` knows); None: the default model."""
        return self.models[name].path if self.models else self.modelPath

    def node_model(self, node: NodeConfig) -> str:
        return node.model or self.default_model

    def node_value(self, node: NodeConfig, key: str):
        """A node's own value, else its model's entry's, else the model section's."""
        own = getattr(node, key, None)
        if own is not None:
            return own
        entry = self.models.get(self.node_model(node))
        own = getattr(entry, key, None)
        return own if own is not None else getattr(self.model, key)

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        for entry in [*data["nodes"], *data["models"].values()]:
            for key in [k for k, v in entry.items() if v is None]:
                del entry[key]
        if not data["models"]:
            del data["models"]
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
            data = json.loads(text, object_pairs_hook=_Object)
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
            basePort=check.integer(net, "network.basePort", 8000, 0, 65535),  # 0: every node the OS's choice
            listen=netconfig.listen(check, net),
            sessionTimeout=check.integer(net, "network.sessionTimeout", NetworkConfig.sessionTimeout,
                                         int(NODE["sessiontimeout"].low * 1000), int(NODE["sessiontimeout"].high * 1000)),
            maxSessions=check.integer(net, "network.maxSessions", 1024, 1, 1_000_000),
            http=check.http_address(net, "network.http"),
            restart=check.choice(net, "network.restart", RESTART_POLICIES[0], list(RESTART_POLICIES)),
            connectTimeout=check.integer(net, "network.connectTimeout", NetworkConfig.connectTimeout, 1, 3_600_000),
            healthTimeout=check.integer(net, "network.healthTimeout", None, 1, 3_600_000),
            tls=netconfig.tls(check, net),
            dns=netconfig.dns_server(check, net),
        )
        model = check.section(data, "model")
        config.model = ModelConfig(**{key: check.node_option(model, f"model.{key}", NODE[option].default, option)
                                      for key, option in NODE_KEYS.items()},
                                   mlock=check.boolean(model, "model.mlock", False),
                                   chatTemplateFile=check.string(model, "model.chatTemplateFile", None))
        config.models = _models(check, data)
        if config.models and config.modelPath is not None:
            check.fail("modelPath", "give the models section or modelPath, not both")
        nodes = data.get("nodes", [])
        if not isinstance(nodes, list):
            raise ConfigError(f"{where}: nodes: must be a list")
        ids, ports = set(), set()
        for i, node in enumerate(nodes):
            key = f"nodes[{i}]"
            if not isinstance(node, dict):
                raise ConfigError(f"{where}: {key}: must be an object")
            check.known_keys(node, key, [f.name for f in dataclasses.fields(NodeConfig)])
            base = config.network.basePort
            n = NodeConfig(
                id=check.string(node, f"{key}.id", f"node-{i}"),
                address=check.string(node, f"{key}.address", "localhost"),
                port=check.integer(node, f"{key}.port", base + i if base else 0, 0, 65535),  # 0: the OS's choice
                weight=check.number(node, f"{key}.weight", 1.0, 0.0, 1e9),
                **{name: check.node_option(node, f"{key}.{name}", None, option) for name, option in NODE_KEYS.items()},
                model=check.string(node, f"{key}.model", None),
                srv=check.string(node, f"{key}.srv", None),
                dns=check.string(node, f"{key}.dns", None),
            )
            if n.record:
                netconfig.record_entry(check, node, key)
                if "port" not in node:
                    n.port = dial.DEFAULT_PORT
            if n.model is not None and n.model not in config.model_names():
                check.fail(f"{key}.model", f"no such model {n.model!r}: the models are "
                                           f"{', '.join(config.model_names())}")
            if n.id in ids:
                raise ConfigError(f"{where}: {key}.id: duplicate node id {n.id!r}")
            if n.record:
                pass  # its ports are the record's
            elif n.port == 0 and not n.is_local:
                check.fail(f"{key}.port", "port 0 (a port the OS chooses) is for a node started here, on localhost")
            elif n.port == 0:
                pass  # each its own
            elif (n.address, n.port) in ports or (n.is_local and ("local", n.port) in ports):
                raise ConfigError(f"{where}: {key}.port: duplicate port {n.port} on {n.address}")
            ids.add(n.id)
            ports.add((n.address, n.port))
            if n.is_local:
                ports.add(("local", n.port))
            config.nodes.append(n)
        return config


def _models(check: "_Checker", data: dict) -> dict[str, ModelEntry]:
    """The models section: name -> ModelEntry, in the config's order."""
    section = check.section(data, "models")
    models = {}
    for name in getattr(section, "duplicates", []):
        check.fail(f"models.{name}", "duplicate model name")
    keys = [f.name for f in dataclasses.fields(ModelEntry)]
    for name, entry in section.items():
        key = f"models.{name}"
        if not MODEL_NAME.match(name):
            check.fail(key, "a model's name is letters, digits and . _ - (a letter or digit first)")
        if not isinstance(entry, dict):
            check.fail(key, "must be an object")
        check.known_keys(entry, key, keys)
        path = check.string(entry, f"{key}.path", None)
        if path is None:
            check.fail(f"{key}.path", "missing: a .gguf file, or a name: " + ", ".join(NAMED))
        models[name] = ModelEntry(
            path=path, **{k: check.node_option(entry, f"{key}.{k}", None, option) for k, option in NODE_KEYS.items()},
            mlock=check.boolean(entry, f"{key}.mlock", None),
            chatTemplateFile=check.string(entry, f"{key}.chatTemplateFile", None))
    return models


class _Object(dict):
    """A JSON object that remembers the keys it was given twice (a model named twice)."""

    def __init__(self, pairs):
        super().__init__(pairs)
        seen: set = set()
        self.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]


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

    def known_keys(self, data: dict, key: str, known: list[str]) -> None:
        """A misspelt key is refused, naming the ones there are."""
        for name in data:
            if name not in known:
                self.fail(f"{key}.{name}", f"unknown key: use {', '.join(known)}")

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
        if key.endswith("port") and value is not None and not low <= value <= 65535:
            self.fail(key, f"port {value} out of range")
        return None if value is None else int(value)


def generate(model: str | dict[str, str] | None, nodes: int | dict[str, int], strategy: str = "round-robin",
             base_port: int = 8000, name: str = "llamafs-deployment") -> DeploymentConfig:
    """A config with its nodes on localhost, ports basePort+i: one model
    (model a path or None, nodes a number), or several (model NAME -> path,
    nodes NAME -> how many, in the models' order)."""
    several = isinstance(model, dict)
    config = DeploymentConfig(name=name, modelPath=None if several else model,
                              models={k: ModelEntry(path=v) for k, v in model.items()} if several else {})
    config.network.loadBalancing = strategy
    config.network.basePort = base_port
    counts = nodes if isinstance(nodes, dict) else {None: nodes}
    for model_of, count in counts.items():
        for _ in range(count):
            i = len(config.nodes)
            config.nodes.append(NodeConfig(id=f"node-{i}", address="localhost", port=base_port + i, model=model_of))
    return DeploymentConfig.from_dict(config.to_dict())  # checked as a loaded file would be
