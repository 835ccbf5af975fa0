"""The definitions engine: definitions tree -> validated model -> build graph with cache keys.

Pure Python: no Twisted, no network. Git trees are read through GitPython
without a checkout.
"""

from distbuild.definitions.aliases import Aliases
from distbuild.definitions.graph import (
    BuildGraph,
    Node,
    build_graph,
    node_from_dict,
    node_to_dict,
    split_artifact,
)
from distbuild.definitions.load import Definitions
from distbuild.definitions.model import (
    Chunk,
    ChunkSpec,
    Cluster,
    ClusterSystem,
    Defaults,
    SplitRule,
    Stratum,
    StratumRef,
    System,
)
from distbuild.definitions.resolve import OfflineResolver, Resolved, Resolver
from distbuild.definitions.source import DirectorySource, GitSource, TreeSource

__all__ = [
    "Aliases",
    "BuildGraph",
    "Chunk",
    "ChunkSpec",
    "Cluster",
    "ClusterSystem",
    "Defaults",
    "Definitions",
    "DirectorySource",
    "GitSource",
    "Node",
    "OfflineResolver",
    "Resolved",
    "Resolver",
    "SplitRule",
    "Stratum",
    "StratumRef",
    "System",
    "TreeSource",
    "build_graph",
    "node_from_dict",
    "node_to_dict",
    "split_artifact",
]
