"""`distbuild deploy CLUSTER_MORPH [DEPLOYMENT...] [ID.KEY=VALUE...] [NAME=VALUE...]`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from distbuild import config
from distbuild.deploy.cluster import expand, parse_arguments
from distbuild.deploy.clusterfile import load_cluster
from distbuild.deploy.deployer import Deployer
from distbuild.deploy.errors import DeployError
from distbuild.deploy.systems import SystemResolver


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The deploy command's options."""
    parser.add_argument("cluster", metavar="CLUSTER_MORPH",
                        help="cluster morphology, relative to the definitions")
    parser.add_argument("args", nargs="*", metavar="DEPLOYMENT | ID.KEY=VALUE | NAME=VALUE",
                        help="deployments to run (default: all), settings that win over "
                             "the cluster's, and variables for $NAME in the cluster")
    parser.add_argument("--definitions", type=Path, default=Path("."),
                        help="definitions checkout (default: the current directory)")
    parser.add_argument("--config", help="configuration file (default: $DISTBUILD_CONFIG)")
    parser.add_argument("--artifact-cache-url",
                        help="artifact cache to fetch systems from (default: the config's "
                             "artifact_cache_url)")


def run(args: argparse.Namespace) -> int:
    """Expand the cluster, then check and deploy the chosen deployments."""
    definitions: Path = args.definitions.resolve()
    url = args.artifact_cache_url or _configured_cache_url(args.config)
    cluster = load_cluster(definitions / args.cluster, args.cluster)
    deployments = expand(cluster, parse_arguments(args.args), os.environ)
    deployer = Deployer(definitions, resolver(definitions), url,
                        progress=lambda line: print(line, flush=True))
    deployer.deploy(deployments)
    return 0


def _configured_cache_url(explicit: str | None) -> str:
    path = config.config_path(explicit)
    url = config.load(path).get("artifact_cache_url")
    if not url:
        where = str(path) if path else "settings"
        raise DeployError("no artifact cache: set artifact_cache_url in the configuration "
                          "file or give --artifact-cache-url", where)
    return str(url)


def resolver(definitions: Path) -> SystemResolver:
    """The systems of `definitions`, with cache keys from the definitions engine."""
    try:
        from distbuild.deploy.engine import EngineSystems
    except ImportError:
        print("distbuild deploy: the definitions engine is not installed", file=sys.stderr)
        raise DeployError("cannot compute cache keys: distbuild.definitions is missing",
                          str(definitions)) from None
    return EngineSystems(definitions)
