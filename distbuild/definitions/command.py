"""`distbuild graph`: show a system's build graph, its cache keys and critical path."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from distbuild import config
from distbuild.definitions import (
    Aliases,
    BuildGraph,
    Definitions,
    DirectorySource,
    GitSource,
    OfflineResolver,
    Resolver,
    build_graph,
)
from distbuild.errors import DistbuildError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("system", metavar="SYSTEM_MORPH",
                        help="path of the system morphology, relative to the definitions")
    parser.add_argument("--definitions", metavar="DIR", default=".",
                        help="the definitions tree (default: the current directory)")
    parser.add_argument("--ref", metavar="REV",
                        help="read the definitions from commit REV of the git repository in "
                             "DIR instead of the files on disk")
    parser.add_argument("--offline", action="store_true",
                        help="do no git resolution: each ref stands in for its tree SHA")
    parser.add_argument("--strict", action="store_true", default=None,
                        help="unknown fields are errors, not warnings "
                             "(also: strict_definitions in the settings)")
    parser.add_argument("--mirror-dir", metavar="DIR", type=Path,
                        help="where to keep git mirrors for resolving refs, as the controller "
                             "does (default: ~/.cache/distbuild/mirrors)")
    parser.add_argument("--json", action="store_true", help="print the graph as one JSON object")
    parser.add_argument("--config", metavar="FILE",
                        help="settings file (default: $DISTBUILD_CONFIG) for trove_git_url "
                             "and repo_aliases")


def run(args: argparse.Namespace) -> int:
    settings = config.client_settings(args.config, strict_definitions=args.strict)
    aliases = Aliases.from_config(settings.trove_git_url, settings.repo_aliases)
    source = (GitSource(args.definitions, args.ref) if args.ref
              else DirectorySource(args.definitions))
    defs = Definitions(source, strict=settings.strict_definitions)
    system = _relative(args.system, Path(args.definitions))
    try:
        graph = build_graph(defs, system, _resolver(args.offline, args.mirror_dir), aliases)
    finally:
        for warning in defs.warnings:
            print(warning, file=sys.stderr)
    if args.json:
        json.dump(graph.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(describe(graph, source.describe()))
    return 0


def _relative(system: str, root: Path) -> str:
    """Accept the morph path relative to the definitions, or as a path from here into them."""
    path = Path(system)
    if path.is_absolute() or (Path.cwd() / path).resolve().is_relative_to(root.resolve()):
        try:
            return str((Path.cwd() / path).resolve().relative_to(root.resolve()))
        except ValueError:
            pass
    return system


def _resolver(offline: bool, mirror_dir: Path | None) -> Resolver:
    """Refs resolved as the controller resolves them, so the keys are a build's keys."""
    if offline:
        return OfflineResolver()
    try:
        from distbuild.trove.refs import local_resolver
    except ImportError:
        raise DistbuildError("resolving refs needs the trove module, which is not installed; "
                             "use --offline") from None
    return local_resolver(mirror_dir)


def describe(graph: BuildGraph, where: str) -> str:
    """The human summary: counts, strata, critical path, and every step with its key."""
    nodes = [graph.nodes[i] for i in graph.order]
    kinds = Counter(n.kind for n in nodes)
    bootstrap = sum(1 for n in nodes if n.build_mode == "bootstrap")
    path = graph.critical_path()
    lines = [
        f"System {graph.system.name} ({graph.system.arch}) from {where}",
        f"  cache key {graph.system.cache_key}",
        f"  {len(nodes)} build steps: {kinds['chunk']} chunks ({bootstrap} bootstrap), "
        f"{kinds['stratum']} strata, 1 system",
        f"  widest point: {_width(graph)} steps can build at once; "
        f"critical path: {len(path)} steps",
        "",
        "Strata:",
    ]
    for n in nodes:
        if n.kind == "stratum":
            chunks = sum(1 for d in n.depends if d.startswith("chunk:"))
            deps = [d.split(":", 1)[1] for d in n.depends if d.startswith("stratum:")]
            lines.append(f"  {n.name:<32} {chunks:>4} chunks"
                         + (f"   on {', '.join(deps)}" if deps else ""))
    lines += ["", "Critical path:"]
    lines += [f"  {i:>3}. {p}" for i, p in enumerate(path, 1)]
    lines += ["", "Build order:"]
    for n in nodes:
        label = f"{n.stratum}/{n.name}" if n.kind == "chunk" else n.name
        source = f"  {n.repo} {n.ref}" if n.kind == "chunk" else ""
        lines.append(f"  {n.cache_key[:12]}  {n.kind:<7} {label}{source}")
    return "\n".join(lines) + "\n"


def _width(graph: BuildGraph) -> int:
    """The most steps that could run at the same time with unlimited workers (widest level)."""
    level: dict[str, int] = {}
    for nid in graph.order:
        level[nid] = 1 + max((level[d] for d in graph.nodes[nid].depends), default=0)
    return max(Counter(level.values()).values())
