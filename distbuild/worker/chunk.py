"""Building a chunk: source, staging area, sandboxed commands, devices, split artifacts."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from distbuild import sandbox
from distbuild.worker import artifacts, staging
from distbuild.worker.artifacts import PackedArtifact, artifact_filename
from distbuild.worker.context import StepContext, WorkerSettings
from distbuild.worker.errors import StepError
from distbuild.worker.log import StepLog

TARGETS = {
    "x86_64": "x86_64-baserock-linux-gnu",
    "x86_32": "i686-baserock-linux-gnu",
    "armv7lhf": "armv7lhf-baserock-linux-gnueabi",
    "armv7l": "armv7l-baserock-linux-gnueabi",
    "armv8l64": "aarch64-baserock-linux-gnu",
    "armv8b64": "aarch64_be-baserock-linux-gnu",
    "ppc64": "powerpc64-baserock-linux-gnu",
}


def build_chunk(ctx: StepContext) -> list[PackedArtifact]:
    """Check out, stage, run every command, and split the install directory."""
    node, log = ctx.node, ctx.log
    build_dir, inst_dir = ctx.tmp / f"{node.name}.build", ctx.tmp / f"{node.name}.inst"
    log.header("source")
    log.line(f"Checking out {node.repo} at {node.commit}")
    ctx.sources.checkout(node.repo, node.commit, build_dir, submodules=node.submodules,
                         on_line=log.line, cancel=ctx.cancel)
    log.header("staging")
    started = time.monotonic()
    layers = ctx.input_trees([(artifact_filename(dep.cache_key, "chunk", rule.artifact), None)
                              for dep in staged_chunks(node, ctx.nodes)
                              for rule in dep.split_rules])
    inst_dir.mkdir()
    over_host = ctx.settings.staging_over_host or node.build_mode == "bootstrap"
    with ctx.cache.holding(layers):
        staged = staging.stage(ctx.tmp / "staging", layers, over_host=over_host,
                               hidden=ctx.settings.hidden_paths(),
                               mask_dir=ctx.settings.work_dir / "host-mask")
        try:
            log.line(f"staged {len(layers)} non-empty artifacts in "
                     f"{time.monotonic() - started:.2f} s")
            _run_commands(ctx, staged, build_dir, inst_dir)
        finally:
            staged.close()
    if node.devices:
        log.header("devices")
        make_devices(node, inst_dir, log)
    log.header("artifacts")
    packed = []
    for name, paths in artifacts.split_tree(inst_dir, node.split_rules).items():
        filename = artifact_filename(node.cache_key, "chunk", name)
        if paths:
            packed.append(artifacts.pack(inst_dir, paths, ctx.out / filename, filename))
        else:  # most are: the same bytes every time
            packed.append(ctx.empty_artifact(filename))
        log.line(f"{filename}: {len(paths)} files, {packed[-1].size} bytes")
    ctx.extra_meta["source"] = {"repo": node.repo, "ref": node.ref, "commit": node.commit,
                                "tree": node.tree}
    return packed


def _run_commands(ctx: StepContext, staged: staging.Staged, build_dir: Path,
                  inst_dir: Path) -> None:
    node = ctx.node
    binds = (*staged.binds, sandbox.Bind(build_dir, f"/{node.name}.build", writable=True),
             sandbox.Bind(inst_dir, f"/{node.name}.inst", writable=True))
    env = chunk_env(node, ctx.settings)
    for phase, commands in node.commands:
        if commands:
            ctx.log.header(f"{phase} commands")
        for command in commands:
            ctx.run_command(phase, command, sandbox.SandboxSpec(
                argv=("sh", "-e", "-c", command), root=staged.root, layout=staged.layout,
                binds=binds, masks=staged.masks, env=env, cwd=f"/{node.name}.build"))


def chunk_env(node: Any, settings: WorkerSettings) -> dict[str, str]:
    """The whole environment of a chunk's commands."""
    # The worker's `jobs` setting caps the definitions' max-jobs: it knows its machine.
    cap = settings.jobs or os.cpu_count() or 1
    jobs = min(node.max_jobs, cap) if node.max_jobs else cap
    prefix = node.prefix or "/usr"
    path = "/usr/bin:/bin:/usr/sbin:/sbin:/tools/bin"
    return {
        "PATH": path if prefix == "/usr" else f"{prefix}/bin:{path}",
        "HOME": "/tmp", "LC_ALL": "C", "TERM": "dumb", "SHELL": "/bin/sh",
        "USER": "root", "USERNAME": "root", "LOGNAME": "root",
        "PREFIX": prefix, "DESTDIR": f"/{node.name}.inst",
        "MAKEFLAGS": f"-j{jobs}", "MORPH_ARCH": node.arch,
        "TARGET": TARGETS.get(node.arch, f"{node.arch}-baserock-linux-gnu"),
        "BOOTSTRAP": "true" if node.build_mode == "bootstrap" else "false",
    }


def closure(node: Any, nodes: Mapping[str, Any]) -> list[Any]:
    """`node`'s transitive dependencies, each after its own dependencies."""
    order: list[Any] = []
    seen: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in seen:
            return
        seen.add(node_id)
        if node_id not in nodes:
            raise StepError(f"dependency {node_id} is not in the build graph given", node.id)
        for dep in nodes[node_id].depends:
            visit(dep)
        order.append(nodes[node_id])

    for dep in node.depends:
        visit(dep)
    return order


def staged_chunks(node: Any, nodes: Mapping[str, Any]) -> list[Any]:
    """The chunks whose artifacts make up `node`'s staging area, Baserock's way.

    A chunk sees its whole dependency closure, except that bootstrap chunks
    of other strata are left out; a bootstrap chunk sees only chunks of its
    own stratum.
    """
    chunks = [n for n in closure(node, nodes) if n.kind == "chunk"]
    if node.build_mode == "bootstrap":
        return [c for c in chunks if c.stratum == node.stratum]
    return [c for c in chunks if c.build_mode != "bootstrap" or c.stratum == node.stratum]


def make_devices(node: Any, inst_dir: Path, log: StepLog) -> None:
    """Create the device nodes a chunk declares in its install directory.

    Done by the worker rather than by build commands, as morph did, since
    the sandbox cannot create device nodes. Needs root (CAP_MKNOD).
    """
    for device in node.devices:
        try:
            kind = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[device["type"]]
            rel = str(device["filename"]).lstrip("/")
            mode = int(str(device.get("permissions", "0600")), 8)
            number = os.makedev(int(device["major"]), int(device["minor"]))
        except (KeyError, ValueError, TypeError) as e:
            raise StepError(f"device {device!r} is malformed: {e}", node.id) from None
        path = inst_dir / rel
        if ".." in Path(rel).parts:
            raise StepError(f"device filename '{device['filename']}' leaves the root", node.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mknod(path, kind | mode, number)
            os.chmod(path, mode)
            os.chown(path, int(device.get("uid", 0)), int(device.get("gid", 0)))
        except PermissionError:
            raise StepError(f"cannot create device /{rel}: the worker needs to run as root "
                            "(CAP_MKNOD)", node.id) from None
        log.line(f"{device['type']} {os.major(number)},{os.minor(number)} "
                 f"{oct(mode)} /{rel}")


