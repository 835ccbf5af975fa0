"""`distbuild build-step`: build one node of a system's graph here, for debugging it.

The step runs exactly as a worker runs it (same sandbox, staging and
artifacts) and its log goes to the terminal as it happens. Dependencies come
from the artifact cache (`artifact_cache_url`) or, with `--with-deps`, are
built here first when neither this machine nor the cache has them. Outputs
stay in the work directory; `--upload-token` also uploads them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from distbuild import config
from distbuild.definitions import (
    Aliases,
    BuildGraph,
    Definitions,
    DirectorySource,
    GitSource,
    build_graph,
)
from distbuild.errors import DistbuildError
from distbuild.worker.cache import LocalArtifactCache
from distbuild.worker.sources import GitSources
from distbuild.worker.step import StepRunner, WorkerSettings


def default_work_dir() -> Path:
    """Where build-step keeps mirrors, artifacts and outputs between runs."""
    return config.user_cache_dir() / "build-step"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("system", metavar="SYSTEM_MORPH",
                        help="path of the system morphology, relative to the definitions")
    parser.add_argument("node", metavar="NODE",
                        help="what to build: a node id (chunk:STRATUM/NAME, stratum:NAME, "
                             "system:NAME) or a chunk or stratum name")
    parser.add_argument("--definitions", metavar="DIR", default=".",
                        help="the definitions tree (default: the current directory)")
    parser.add_argument("--ref", metavar="REV",
                        help="read the definitions from commit REV of the git repository in DIR")
    parser.add_argument("--config", metavar="FILE",
                        help="settings file (default: $DISTBUILD_CONFIG): artifact_cache_url, "
                             "trove_git_url, repo_aliases, and a worker: section")
    parser.add_argument("--artifact-cache-url", metavar="URL",
                        help="where dependencies are downloaded from (and uploads go)")
    parser.add_argument("--trove-git-url", metavar="URL",
                        help="the trove's git base URL, for upstream: and baserock: repos")
    parser.add_argument("--repo-alias", metavar="NAME=PULL#PUSH", action="append",
                        help="a repository alias, e.g. 'upstream=file:///srv/repos/%%s#'")
    parser.add_argument("--work-dir", metavar="DIR", type=Path,
                        help=f"mirrors, artifacts and outputs (default: {default_work_dir()})")
    parser.add_argument("--jobs", metavar="N", type=int, help="make -jN (default: cores)")
    parser.add_argument("--staging-over-host", action="store_true", default=None,
                        help="layer the staging area over this machine's root, read-only, "
                             "so definitions without a toolchain build with the host's")
    parser.add_argument("--with-deps", action="store_true",
                        help="build missing dependencies here first")
    parser.add_argument("--upload-token", metavar="TOKEN",
                        help="upload NODE's results to the artifact cache with this token "
                             "(tokens are bound to one cache key: dependencies built with "
                             "--with-deps stay local)")


def run(args: argparse.Namespace) -> int:
    client = config.client_settings(args.config, artifact_cache_url=args.artifact_cache_url,
                                    trove_git_url=args.trove_git_url)
    settings = worker_settings(args)
    aliases = Aliases.from_config(client.trove_git_url,
                                  [*client.repo_aliases, *(args.repo_alias or [])])
    graph = _graph(args, aliases, settings.work_dir)
    target = find_node(graph, args.node)
    if args.upload_token and not client.artifact_cache_url:
        raise DistbuildError("--upload-token needs an artifact cache (--artifact-cache-url "
                             "or artifact_cache_url in the configuration)")
    cache_client = None
    if client.artifact_cache_url:
        from distbuild.trove.client import CacheClient

        cache_client = CacheClient(client.artifact_cache_url)
    source = None
    if cache_client is not None:
        from distbuild.worker.remote import TroveArtifactSource

        source = TroveArtifactSource(cache_client)
    runner = StepRunner(settings, GitSources(settings.work_dir / "mirrors"),
                        LocalArtifactCache(settings.work_dir / "artifacts", source))
    todo = [target]
    if args.with_deps:
        todo = [n for n in graph.closure(target) if not _available(graph, n, runner, cache_client)]
        todo.append(target)
    settings.clean()
    for node_id in todo:
        node = graph.nodes[node_id]
        print(f"Building {node_id}", flush=True)
        result = runner.run(node, graph.nodes, on_line=_print)
        for artifact in result.artifacts:
            print(f"Artifact: {artifact.path}", flush=True)
        if args.upload_token and cache_client is not None and node_id == target:
            from distbuild.worker.remote import upload

            upload(result, cache_client, args.upload_token)
            print(f"Uploaded {node_id} to {cache_client.base_url}", flush=True)
    return 0


def worker_settings(args: argparse.Namespace) -> WorkerSettings:
    """The `worker:` section of the configuration file, with command-line overrides."""
    path = config.config_path(args.config)
    section = config.load(path).get("worker") or {}
    where = f"{path}: worker" if path else "worker settings"
    if not isinstance(section, dict):
        raise DistbuildError("the worker section must be a mapping", where)
    # The same section configures `distbuild worker` (name, controller_address, ...),
    # whose own command checks those keys.
    known = {f.name for f in dataclasses.fields(WorkerSettings)}
    values = {k: v for k, v in section.items() if k in known}
    values.setdefault("work_dir", str(default_work_dir()))
    return config.section(WorkerSettings, values, where, work_dir=args.work_dir,
                          jobs=args.jobs, staging_over_host=args.staging_over_host)


def find_node(graph: BuildGraph, wanted: str) -> str:
    """The id of the node `wanted` names; a clear error if none or several."""
    if wanted in graph.nodes:
        return wanted
    matches = [nid for nid, n in graph.nodes.items() if n.name == wanted]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DistbuildError(f"no chunk, stratum or system named '{wanted}' in the graph",
                             graph.system.name)
    raise DistbuildError(f"'{wanted}' names several nodes ({', '.join(sorted(matches))}); "
                         "give the node id", graph.system.name)


def _graph(args: argparse.Namespace, aliases: Aliases, work_dir: Path) -> BuildGraph:
    from distbuild.trove.refs import GitResolver

    source = GitSource(args.definitions, args.ref) if args.ref else DirectorySource(
        args.definitions)
    return build_graph(Definitions(source), args.system, GitResolver(work_dir / "resolver"),
                       aliases)


def _available(graph: BuildGraph, node_id: str, runner: StepRunner, client) -> bool:
    node = graph.nodes[node_id]
    names = node.artifact_filenames()
    if all(runner.cache.path(f).exists() for f in names):
        return True
    return client is not None and all(client.has_artifacts(names).values())


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
