"""`distbuild deploy CLUSTER_MORPH [DEPLOYMENT...] [ID.KEY=VALUE...] [NAME=VALUE...]`."""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from distbuild import config
from distbuild.definitions import (
    Aliases,
    Definitions,
    DirectorySource,
    OfflineResolver,
    Resolver,
)
from distbuild.deploy.cluster import expand, parse_arguments
from distbuild.deploy.deployer import Deployer
from distbuild.deploy.errors import DeployError
from distbuild.deploy.systems import DefinitionsSystems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The deploy command's options."""
    parser.add_argument("cluster", metavar="CLUSTER_MORPH",
                        help="cluster morphology, relative to the definitions")
    parser.add_argument("args", nargs="*", metavar="DEPLOYMENT | ID.KEY=VALUE | NAME=VALUE",
                        help="deployments to run (default: all), settings that win over "
                             "the cluster's, and variables for $NAME in the cluster")
    parser.add_argument("--definitions", metavar="DIR", default=".",
                        help="the definitions tree (default: the current directory)")
    parser.add_argument("--config", metavar="FILE",
                        help="settings file (default: $DISTBUILD_CONFIG) for "
                             "artifact_cache_url, trove_git_url and repo_aliases")
    parser.add_argument("--artifact-cache-url", metavar="URL",
                        help="the artifact cache to fetch systems from (default: the "
                             "settings file's artifact_cache_url)")
    parser.add_argument("--offline", action="store_true",
                        help="do no git resolution: each ref stands in for its tree SHA "
                             "(deploys what an --offline build made)")
    parser.add_argument("--mirror-dir", metavar="DIR", type=Path,
                        help="where to keep git mirrors for resolving refs, as the "
                             "controller does (default: ~/.cache/distbuild/mirrors)")


def run(args: argparse.Namespace) -> int:
    """Expand the cluster, then check and deploy the chosen deployments."""
    settings = config.client_settings(args.config,
                                      artifact_cache_url=args.artifact_cache_url)
    if not settings.artifact_cache_url:
        raise DeployError("no artifact cache: give --artifact-cache-url or set "
                          "artifact_cache_url in the settings file ($DISTBUILD_CONFIG)")
    defs = Definitions(DirectorySource(args.definitions), strict=settings.strict_definitions)
    try:
        cluster = defs.cluster(args.cluster)
        deployments = expand(cluster, parse_arguments(args.args), os.environ)
        aliases = Aliases.from_config(settings.trove_git_url, settings.repo_aliases)
        systems = DefinitionsSystems(defs, _resolver(args.offline, args.mirror_dir), aliases)
        deployer = Deployer(Path(args.definitions).resolve(), systems,
                            settings.artifact_cache_url, progress=_show)
        deployer.deploy(deployments)
    finally:
        for warning in defs.warnings:
            print(warning, file=sys.stderr)
    return 0


def _show(line: str) -> None:
    # UTC timestamps, as distbuild's build output and Baserock's deploy showed.
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%H:%M:%S")
    print(f"{stamp} {line}", flush=True)


def _resolver(offline: bool, mirror_dir: Path | None) -> Resolver:
    """Refs resolved as the controller resolved them for the build, so cache keys match."""
    if offline:
        return OfflineResolver()
    from distbuild.trove.refs import local_resolver

    return local_resolver(mirror_dir)
