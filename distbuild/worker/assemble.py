"""Building strata and systems from chunk artifacts already in the cache."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from distbuild import mounts, sandbox
from distbuild.worker import artifacts, staging, treepack, untar
from distbuild.worker.artifacts import ArtifactInfo, PackedArtifact, artifact_filename
from distbuild.worker.context import StepContext
from distbuild.worker.errors import StepError

# Directories every assembled system has, even when no chunk installs them.
SYSTEM_DIRS = ("dev", "proc", "sys", "tmp", "run", "var", "home", "root", "mnt")


def build_stratum(ctx: StepContext) -> list[PackedArtifact]:
    """Sort the stratum's chunk artifacts into its stratum artifacts (JSON documents)."""
    node, log = ctx.node, ctx.log
    chunks = [ctx.nodes[d] for d in node.depends
              if ctx.nodes[d].kind == "chunk" and ctx.nodes[d].stratum == node.name]
    members: dict[str, list[ArtifactInfo]] = {r.artifact: [] for r in node.split_rules}
    for chunk in chunks:
        for rule in chunk.split_rules:
            name = rule.artifact
            target = node.artifact_overrides.get(name) or artifacts.first_match(
                name, node.split_rules)
            if target is None:
                raise StepError(f"chunk artifact '{name}' matches no stratum split rule",
                                node.id)
            if target not in members:
                raise StepError(f"chunk artifact '{name}' is assigned to '{target}', "
                                "which is not one of the stratum's artifacts", node.id)
            info = ctx.cache.info(artifact_filename(chunk.cache_key, "chunk", name))
            members[target].append(info)
            ctx.record_input(info.filename, info.sha256)
    packed = []
    for name, chunk_artifacts in members.items():
        filename = artifact_filename(node.cache_key, "stratum", name)
        artifacts.write_json(ctx.out / filename, artifacts.stratum_document(
            node.name, name, node.cache_key, chunk_artifacts))
        packed.append(artifacts.describe(ctx.out / filename, filename))
        log.line(f"{filename}: {len(chunk_artifacts)} chunk artifacts")
    return packed


def build_system(ctx: StepContext) -> list[PackedArtifact]:
    """Assemble the root filesystem, run system integration in it, and pack it.

    The root is the chunks' unpacked trees layered copy-on-write (see
    worker.staging), or, where the worker cannot mount, the tarballs
    unpacked one after another; later chunks win either way.
    """
    node, log = ctx.node, ctx.log
    log.header("assembling")
    started = time.monotonic()
    contents = []
    for stratum_name, selected in node.strata_artifacts.items():
        stratum = ctx.nodes[f"stratum:{stratum_name}"]
        names = selected if selected is not None else [r.artifact for r in stratum.split_rules]
        for name in names:
            filename = artifact_filename(stratum.cache_key, "stratum", name)
            doc = artifacts.read_stratum(ctx.cache.fetch(filename), filename)
            ctx.record_input(filename, ctx.cache.sha256(filename))
            contents += [{"stratum": stratum_name, **chunk} for chunk in doc["chunks"]]
            log.line(f"{filename}: {len(doc['chunks'])} chunk artifacts")
    with contextlib.ExitStack() as held:
        staged = None
        if mounts.available():
            layers = ctx.input_trees([(c["filename"], c["sha256"]) for c in contents])
            held.enter_context(ctx.cache.holding(layers))
            staged = staging.system_root(ctx.tmp / "system", layers)
        if staged is None:
            rootfs = ctx.tmp / "rootfs"
            unpacker = untar.Unpacker(rootfs)
            for chunk in contents:
                # Recorded already if the trees were made before mounting failed.
                get = ctx.cache.fetch if mounts.available() else ctx.input_tarball
                unpacker.add(get(chunk["filename"], chunk["sha256"]), chunk["filename"])
            unpacker.finish()
        else:
            held.callback(staged.close)
            rootfs = staged.root
        log.line(f"assembled {len(contents)} chunk artifacts in "
                 f"{time.monotonic() - started:.2f} s")
        return _finish_system(ctx, rootfs, contents)


def _finish_system(ctx: StepContext, rootfs: Path, contents: list[dict]) -> list[PackedArtifact]:
    node, log = ctx.node, ctx.log
    for d in SYSTEM_DIRS:
        (rootfs / d).mkdir(exist_ok=True)
    integrate(ctx, rootfs, {c["filename"] for c in contents})
    meta_dir = rootfs / "baserock"
    meta_dir.mkdir(exist_ok=True)
    artifacts.write_json(meta_dir / f"{node.name}.meta", {
        "format": artifacts.SYSTEM_META_FORMAT, "system": node.name, "arch": node.arch,
        "cache_key": node.cache_key, "contents": contents})
    log.header("packing")
    started, cpu = time.monotonic(), os.times()
    filename = artifact_filename(node.cache_key, "system", f"{node.name}-rootfs")
    names = treepack.tree_names(rootfs)
    packed = treepack.pack_tree(rootfs, ctx.out / filename, filename, names)
    done = os.times()
    log.line(f"{filename}: {len(names)} entries, {packed.size} bytes, "
             f"{time.monotonic() - started:.2f} s (the worker's CPU: "
             f"{done.user - cpu.user:.2f} s user, {done.system - cpu.system:.2f} s system)")
    ctx.extra_meta["contents"] = contents
    return [packed]


def integrate(ctx: StepContext, rootfs: Path, included: set[str]) -> None:
    """Run the system-integration commands of the chunk artifacts in `included`, by name."""
    scripts: list[tuple[str, str, tuple[str, ...]]] = []
    for chunk in (n for n in ctx.nodes.values() if n.kind == "chunk"):
        for artifact, named in (chunk.system_integration or {}).items():
            if artifact_filename(chunk.cache_key, "chunk", artifact) in included:
                scripts += [(name, artifact, tuple(cmds)) for name, cmds in named.items()]
    if not scripts:
        return
    ctx.log.header("system-integration")
    layer = sandbox.layer_host(rootfs) if ctx.settings.staging_over_host else None
    env = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/tmp", "LC_ALL": "C",
           "MORPH_ARCH": ctx.node.arch}
    try:
        for name, artifact, commands in sorted(scripts):
            ctx.log.line(f"{name} (from {artifact})")
            for command in commands:
                ctx.run_command(f"system-integration {name}", command, sandbox.SandboxSpec(
                    argv=("sh", "-e", "-c", command), root=rootfs, root_writable=True,
                    binds=layer.binds if layer else (),
                    masks=ctx.settings.host_masks() if layer else (), env=env))
    finally:
        if layer is not None:
            layer.remove()
