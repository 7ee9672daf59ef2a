"""The llamafs coordinator: many nodes served as one tree, the deployment
config, the `deploy` CLI and the Python API.

    from coordinator import DeploymentManager, DeploymentConfig, LoadBalancingStrategy
"""

from .config import ConfigError, DeploymentConfig, LoadBalancingStrategy, NodeConfig, generate
from .deploy import DeploymentManager, LimboDeploymentManager

LimboDeploymentConfig = DeploymentConfig

__all__ = ["ConfigError", "DeploymentConfig", "DeploymentManager", "LimboDeploymentConfig",
           "LimboDeploymentManager", "LoadBalancingStrategy", "NodeConfig", "generate"]
