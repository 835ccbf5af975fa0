"""Loading and validating a definitions tree into model objects.

Every problem becomes a DefinitionsError naming the file, the line where it
can, and the field, in one sentence. The one exception is an unknown field:
real trees carry typos that morph ignored for years, so it becomes a warning
(an error when `strict`) and is left out of the model, hence out of cache
keys. Parsed files are cached, so loading many systems from one tree reads
each file once, and warns once.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

from distbuild.definitions.builtin import VERSION6_DEFAULTS
from distbuild.definitions.model import (
    ARCHES,
    BUILD_MODES,
    COMMAND_FIELDS,
    BuildSystem,
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
from distbuild.definitions.source import TreeSource
from distbuild.definitions.yamlfile import line_of, parse
from distbuild.errors import DefinitionsError

SUPPORTED_VERSIONS = (6, 7, 8)

CHUNK_FIELDS = {
    "name", "kind", "description", "build-system", "max-jobs", "products", "devices",
    "system-integration", "prefix", "build-mode", *COMMAND_FIELDS,
}
STRATUM_FIELDS = {"name", "kind", "description", "build-depends", "products", "chunks"}
SPEC_FIELDS = {
    "name", "repo", "ref", "unpetrify-ref", "morph", "build-system", "build-depends",
    "build-mode", "prefix", "artifacts", "submodules",
}
SYSTEM_FIELDS = {"name", "kind", "description", "arch", "strata", "configuration-extensions"}
STRATUM_REF_FIELDS = {"name", "morph", "artifacts"}
CLUSTER_FIELDS = {"name", "kind", "description", "systems"}
CLUSTER_SYSTEM_FIELDS = {"morph", "deploy-defaults", "deploy", "subsystems"}
BUILD_SYSTEM_FIELDS = {"configure-commands", "build-commands", "install-commands",
                       "strip-commands"}
DEVICE_FIELDS = {"type", "filename", "gid", "uid", "major", "minor", "permissions"}

KeyPath = tuple[Any, ...]
Warn = Callable[[str], None]


def field_name(keypath: KeyPath) -> str:
    """`('chunks', 3, 'build-depends')` -> `chunks[3].build-depends`."""
    out = ""
    for step in keypath:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else str(step))
    return out


class Document:
    """One parsed file, able to report an error at any of its fields."""

    def __init__(self, path: str, text: bytes, data: Any, warn: Warn | None = None):
        self.path = path
        self.text = text
        self.data = data
        self.warn = warn

    def error(self, keypath: KeyPath, message: str) -> DefinitionsError:
        line = line_of(self.text, keypath) if keypath else None
        where = f"{self.path}:{line}" if line else self.path
        name = field_name(keypath)
        return DefinitionsError(f"{name}: {message}" if name else message, where)

    # Typed field readers: each returns the value or raises naming the field.

    def check_fields(self, mapping: dict, allowed: set[str], keypath: KeyPath = ()) -> None:
        """Warn about (or, with no warning sink, refuse) every key not in `allowed`."""
        for key in mapping:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                problem = self.error((*keypath, key), f"unknown field{hint}")
                if self.warn is None:
                    raise problem
                self.warn(str(problem))

    def mapping(self, value: Any, keypath: KeyPath) -> dict:
        if not isinstance(value, dict):
            raise self.error(keypath, f"must be a mapping, not {_kind(value)}")
        return value

    def string(self, mapping: dict, key: str, keypath: KeyPath, *, required: bool = False,
               coerce_numbers: bool = False) -> str | None:
        value = mapping.get(key)
        if value is None:
            if required:
                raise self.error(keypath, f"required field '{key}' is missing")
            return None
        if coerce_numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise self.error((*keypath, key), f"must be a string, not {_kind(value)}")
        if required and not value.strip():
            raise self.error((*keypath, key), "must not be empty")
        return value

    def string_list(self, mapping: dict, key: str, keypath: KeyPath) -> tuple[str, ...]:
        value = mapping.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error((*keypath, key), f"must be a list of strings, not {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error((*keypath, key, i), f"must be a string, not {_kind(item)}")
        return tuple(value)

    def split_rules(self, mapping: dict, key: str, keypath: KeyPath) -> tuple[SplitRule, ...]:
        value = mapping.get(key)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self.error((*keypath, key), f"must be a list of split rules, not {_kind(value)}")
        rules = []
        for i, item in enumerate(value):
            at = (*keypath, key, i)
            rule = self.mapping(item, at)
            self.check_fields(rule, {"artifact", "include"}, at)
            artifact = self.string(rule, "artifact", at, required=True)
            include = self.string_list(rule, "include", at)
            if "include" not in rule:
                raise self.error(at, "required field 'include' is missing")
            for j, pattern in enumerate(include):
                try:
                    re.compile(pattern)
                except re.error as e:
                    message = f"'{pattern}' is not a valid regular expression ({e})"
                    raise self.error((*at, "include", j), message) from None
            rules.append(SplitRule(artifact, include))  # type: ignore[arg-type]
        return tuple(rules)


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "empty"}.get(type(value), "a value")


class Definitions:
    """A definitions tree: VERSION, DEFAULTS and the morphologies, loaded on demand."""

    def __init__(self, source: TreeSource, *, strict: bool = False):
        """`strict` makes unknown fields errors; otherwise they collect in `warnings`."""
        self.source = source
        self.strict = strict
        self.warnings: list[str] = []
        self._docs: dict[str, Document] = {}
        self._models: dict[str, Any] = {}
        self.version = self._read_version()
        self.defaults = self._read_defaults()

    # -- top-level files ------------------------------------------------------------------

    def _read_version(self) -> int:
        text = self.source.read("VERSION")
        if text is None:
            raise DefinitionsError("no VERSION file: this is not a definitions tree "
                                   "(expected a file containing 'version: N')",
                                   f"{self.source.describe()}/VERSION")
        doc = Document("VERSION", text, parse(text, "VERSION"))
        data = doc.data
        if not isinstance(data, dict) or "version" not in data:
            raise doc.error((), "must contain 'version: N'")
        version = data["version"]
        if not isinstance(version, int) or isinstance(version, bool):
            raise doc.error(("version",), f"must be a whole number, not {_kind(version)}")
        if version not in SUPPORTED_VERSIONS:
            supported = ", ".join(map(str, SUPPORTED_VERSIONS))
            raise doc.error(("version",),
                            f"definitions version {version} is not supported "
                            f"(supported: {supported})")
        return version

    def _read_defaults(self) -> Defaults:
        text = self.source.read("DEFAULTS")
        if self.version == 6:
            return VERSION6_DEFAULTS  # version 6 trees have no DEFAULTS; built-ins apply
        if text is None:
            raise DefinitionsError(f"definitions version {self.version} needs a DEFAULTS file",
                                   "DEFAULTS")
        doc = Document("DEFAULTS", text, parse(text, "DEFAULTS"), self._warner())
        data = doc.mapping(doc.data if doc.data is not None else {}, ())
        doc.check_fields(data, {"build-systems", "split-rules"})
        systems: dict[str, BuildSystem] = {}
        for name, body in doc.mapping(data.get("build-systems") or {}, ("build-systems",)).items():
            at = ("build-systems", name)
            body = doc.mapping(body if body is not None else {}, at)
            doc.check_fields(body, BUILD_SYSTEM_FIELDS, at)
            systems[str(name)] = BuildSystem(
                str(name), {f: doc.string_list(body, f, at) for f in BUILD_SYSTEM_FIELDS})
        if "manual" not in systems:
            systems["manual"] = VERSION6_DEFAULTS.build_systems["manual"]
        rules = doc.mapping(data.get("split-rules") or {}, ("split-rules",))
        doc.check_fields(rules, {"chunk", "stratum"}, ("split-rules",))
        chunk_rules = doc.split_rules(rules, "chunk", ("split-rules",))
        stratum_rules = doc.split_rules(rules, "stratum", ("split-rules",))
        return Defaults(
            build_systems=systems,
            chunk_split_rules=chunk_rules or VERSION6_DEFAULTS.chunk_split_rules,
            stratum_split_rules=stratum_rules or VERSION6_DEFAULTS.stratum_split_rules,
        )

    def _warner(self) -> Warn | None:
        if self.strict:
            return None
        # A closure over the list, not a bound method: a Document holding one would
        # make a cycle with this object, and a controller's planned trees (with the
        # git objects they read) would wait for the cyclic collector's rare full pass.
        warnings = self.warnings

        def warn(line: str) -> None:
            if line not in warnings:
                warnings.append(line)

        return warn

    # -- morphologies ---------------------------------------------------------------------

    def document(self, path: str, kind: str, referrer: tuple[Document, KeyPath] | None = None
                 ) -> Document:
        """Read and parse morphology `path`, checking it is of `kind`."""
        doc = self._docs.get(path)
        if doc is None:
            text = self.source.read(path)
            if text is None:
                message = f"{path} does not exist"
                if referrer:
                    raise referrer[0].error(referrer[1], message)
                raise DefinitionsError(f"no such file in {self.source.describe()}", path)
            data = parse(text, path)
            doc = Document(path, text, data, self._warner())
            if not isinstance(data, dict):
                raise doc.error((), f"a morphology must be a mapping, not {_kind(data)}")
            self._docs[path] = doc
        actual = doc.data.get("kind")
        if actual != kind:
            if referrer:
                raise referrer[0].error(
                    referrer[1], f"{path} is a {actual or 'file with no kind'}, not a {kind}")
            if actual is None:
                raise doc.error((), "required field 'kind' is missing")
            raise doc.error(("kind",), f"this is a {actual}, but a {kind} was expected")
        return doc

    def _cached(self, path: str, kind: str, referrer, build) -> Any:
        key = f"{kind}:{path}"
        model = self._models.get(key)
        if model is None:
            model = build(self.document(path, kind, referrer))
            self._models[key] = model
        return model

    def chunk(self, path: str, referrer: tuple[Document, KeyPath] | None = None) -> Chunk:
        """The chunk morphology at `path`."""
        return self._cached(path, "chunk", referrer, self._build_chunk)

    def stratum(self, path: str, referrer: tuple[Document, KeyPath] | None = None) -> Stratum:
        """The stratum morphology at `path`."""
        return self._cached(path, "stratum", referrer, self._build_stratum)

    def system(self, path: str) -> System:
        """The system morphology at `path`."""
        return self._cached(path, "system", None, self._build_system)

    def cluster(self, path: str) -> Cluster:
        """The cluster morphology at `path`."""
        return self._cached(path, "cluster", None, self._build_cluster)

    def _build_chunk(self, doc: Document) -> Chunk:
        d = doc.data
        doc.check_fields(d, CHUNK_FIELDS)
        commands = {f: doc.string_list(d, f, ()) for f in COMMAND_FIELDS if f in d}
        build_system = doc.string(d, "build-system", ())
        if build_system is not None and build_system not in self.defaults.build_systems:
            raise self._unknown_build_system(doc, ("build-system",), build_system)
        return Chunk(
            path=doc.path,
            name=doc.string(d, "name", (), required=True),  # type: ignore[arg-type]
            description=doc.string(d, "description", ()) or "",
            build_system=build_system,
            commands=commands,
            products=doc.split_rules(d, "products", ()),
            max_jobs=self._max_jobs(doc, d),
            devices=self._devices(doc, d),
            system_integration=self._system_integration(doc, d),
            prefix=self._prefix(doc, d, ()),
            build_mode=self._build_mode(doc, d, ()),
        )

    def _unknown_build_system(self, doc: Document, at: KeyPath, name: str) -> DefinitionsError:
        known = ", ".join(sorted(self.defaults.build_systems))
        return doc.error(at, f"unknown build-system '{name}' (known: {known})")

    def _max_jobs(self, doc: Document, d: dict) -> int | None:
        value = d.get("max-jobs")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise doc.error(("max-jobs",), f"must be a whole number of at least 1, not {value!r}")
        return value

    def _devices(self, doc: Document, d: dict) -> tuple[dict, ...]:
        value = d.get("devices")
        if value is None:
            return ()
        if not isinstance(value, list):
            raise doc.error(("devices",), f"must be a list of device nodes, not {_kind(value)}")
        for i, dev in enumerate(value):
            doc.mapping(dev, ("devices", i))
            doc.check_fields(dev, DEVICE_FIELDS, ("devices", i))
            missing = sorted(DEVICE_FIELDS - set(dev))
            if missing:
                raise doc.error(("devices", i), f"device node needs {', '.join(missing)}")
        return tuple(value)

    def _system_integration(self, doc: Document, d: dict) -> dict[str, dict[str, tuple]]:
        value = d.get("system-integration")
        if value is None:
            return {}
        out: dict[str, dict[str, tuple]] = {}
        for artifact, scripts in doc.mapping(value, ("system-integration",)).items():
            at = ("system-integration", artifact)
            out[str(artifact)] = {
                str(name): doc.string_list(doc.mapping(scripts, at), name, at)
                for name in doc.mapping(scripts, at)
            }
        return out

    def _prefix(self, doc: Document, d: dict, at: KeyPath) -> str | None:
        prefix = doc.string(d, "prefix", at)
        if prefix is not None and not prefix.startswith("/"):
            raise doc.error((*at, "prefix"), f"must be an absolute path, not '{prefix}'")
        return prefix

    def _build_mode(self, doc: Document, d: dict, at: KeyPath) -> str | None:
        mode = doc.string(d, "build-mode", at)
        if mode is not None and mode not in BUILD_MODES:
            raise doc.error((*at, "build-mode"),
                            f"unknown build-mode '{mode}' (known: {', '.join(BUILD_MODES)})")
        return mode

    def _build_stratum(self, doc: Document) -> Stratum:
        d = doc.data
        doc.check_fields(d, STRATUM_FIELDS)
        name = doc.string(d, "name", (), required=True)
        deps = []
        raw_deps = d.get("build-depends") or []
        if not isinstance(raw_deps, list):
            raise doc.error(("build-depends",), f"must be a list, not {_kind(raw_deps)}")
        for i, dep in enumerate(raw_deps):
            at = ("build-depends", i)
            doc.check_fields(doc.mapping(dep, at), {"morph"}, at)
            deps.append(doc.string(dep, "morph", at, required=True))
        chunks = d.get("chunks")
        if chunks is None:
            raise doc.error((), "required field 'chunks' is missing")
        if not isinstance(chunks, list) or not chunks:
            raise doc.error(("chunks",), "must be a non-empty list of chunks")
        specs = tuple(self._chunk_spec(doc, i, spec) for i, spec in enumerate(chunks))
        seen: dict[str, int] = {}
        for spec in specs:
            if spec.name in seen:
                raise doc.error(("chunks", spec.index, "name"),
                                f"chunk '{spec.name}' is listed twice in stratum '{name}'")
            seen[spec.name] = spec.index
        return Stratum(
            path=doc.path, name=name, chunks=specs,  # type: ignore[arg-type]
            description=doc.string(d, "description", ()) or "",
            build_depends=tuple(deps),  # type: ignore[arg-type]
            products=doc.split_rules(d, "products", ()),
        )

    def _chunk_spec(self, doc: Document, index: int, raw: Any) -> ChunkSpec:
        at: KeyPath = ("chunks", index)
        spec = doc.mapping(raw, at)
        allowed = SPEC_FIELDS if self.version >= 8 else SPEC_FIELDS - {"submodules"}
        if "submodules" in spec and self.version < 8:
            raise doc.error((*at, "submodules"),
                            f"submodules need definitions version 8 (this tree is {self.version})")
        doc.check_fields(spec, allowed, at)
        name = doc.string(spec, "name", at, required=True)
        morph = doc.string(spec, "morph", at)
        build_system = doc.string(spec, "build-system", at)
        if morph and build_system:
            raise doc.error((*at, "build-system"),
                            f"chunk '{name}' gives both 'morph' and 'build-system'; give one")
        if self.version == 6 and not morph and not build_system:
            raise doc.error(at, f"chunk '{name}' needs 'morph' or 'build-system' "
                                "in definitions version 6")
        if build_system is not None and build_system not in self.defaults.build_systems:
            raise self._unknown_build_system(doc, (*at, "build-system"), build_system)
        artifacts = doc.mapping(spec.get("artifacts") or {}, (*at, "artifacts"))
        for key, value in artifacts.items():
            if not isinstance(value, str):
                raise doc.error((*at, "artifacts", key), f"must name a stratum artifact, "
                                f"not {_kind(value)}")
        submodules = spec.get("submodules") or {}
        self._check_submodules(doc, submodules, (*at, "submodules"))
        return ChunkSpec(
            index=index,
            name=name,  # type: ignore[arg-type]
            repo=doc.string(spec, "repo", at, required=True),  # type: ignore[arg-type]
            ref=doc.string(spec, "ref", at, required=True, coerce_numbers=True),  # type: ignore[arg-type]
            unpetrify_ref=doc.string(spec, "unpetrify-ref", at, coerce_numbers=True),
            morph=morph,
            build_system=build_system,
            build_depends=doc.string_list(spec, "build-depends", at),
            build_mode=self._build_mode(doc, spec, at),
            prefix=self._prefix(doc, spec, at),
            artifacts={str(k): v for k, v in artifacts.items()},
            submodules=submodules,
        )

    def _check_submodules(self, doc: Document, value: Any, at: KeyPath) -> None:
        for path, sub in doc.mapping(value, at).items():
            sub_at = (*at, path)
            doc.mapping(sub, sub_at)
            doc.check_fields(sub, {"url", "submodules"}, sub_at)
            doc.string(sub, "url", sub_at, required=True)
            if "submodules" in sub:
                self._check_submodules(doc, sub["submodules"], (*sub_at, "submodules"))

    def _build_system(self, doc: Document) -> System:
        d = doc.data
        doc.check_fields(d, SYSTEM_FIELDS)
        name = doc.string(d, "name", (), required=True)
        arch = doc.string(d, "arch", (), required=True)
        if arch not in ARCHES:
            raise doc.error(("arch",), f"unknown arch '{arch}' (known: {', '.join(ARCHES)})")
        strata = d.get("strata")
        if not strata:
            raise doc.error(("strata",) if "strata" in d else (),
                            f"system '{name}' has no strata")
        if not isinstance(strata, list):
            raise doc.error(("strata",), f"must be a list of strata, not {_kind(strata)}")
        refs = []
        seen: set[str] = set()
        for i, raw in enumerate(strata):
            at = ("strata", i)
            ref = doc.mapping(raw, at)
            doc.check_fields(ref, STRATUM_REF_FIELDS, at)
            morph = doc.string(ref, "morph", at, required=True)
            if morph in seen:
                raise doc.error((*at, "morph"), f"{morph} is listed twice")
            seen.add(morph)  # type: ignore[arg-type]
            artifacts = doc.string_list(ref, "artifacts", at) if "artifacts" in ref else None
            refs.append(StratumRef(i, doc.string(ref, "name", at) or "", morph, artifacts))  # type: ignore[arg-type]
        return System(
            path=doc.path, name=name, arch=arch, strata=tuple(refs),  # type: ignore[arg-type]
            description=doc.string(d, "description", ()) or "",
            configuration_extensions=doc.string_list(d, "configuration-extensions", ()),
        )

    def _build_cluster(self, doc: Document) -> Cluster:
        d = doc.data
        doc.check_fields(d, CLUSTER_FIELDS)
        systems = d.get("systems")
        if not isinstance(systems, list) or not systems:
            raise doc.error(("systems",) if "systems" in d else (),
                            "a cluster needs a non-empty list of systems")
        seen: dict[str, str] = {}
        return Cluster(
            path=doc.path,
            name=doc.string(d, "name", (), required=True),  # type: ignore[arg-type]
            systems=tuple(self._cluster_system(doc, s, ("systems", i), seen)
                          for i, s in enumerate(systems)),
            description=doc.string(d, "description", ()) or "",
        )

    def _cluster_system(self, doc: Document, raw: Any, at: KeyPath, seen: dict[str, str]
                        ) -> ClusterSystem:
        entry = doc.mapping(raw, at)
        doc.check_fields(entry, CLUSTER_SYSTEM_FIELDS, at)
        morph = doc.string(entry, "morph", at, required=True)
        defaults = doc.mapping(entry.get("deploy-defaults") or {}, (*at, "deploy-defaults"))
        deploy = doc.mapping(entry.get("deploy") or {}, (*at, "deploy"))
        deployments = {}
        for ident, settings in deploy.items():
            ident = str(ident)
            if ident in seen:
                raise doc.error((*at, "deploy", ident),
                                f"deployment '{ident}' is already defined for {seen[ident]}")
            seen[ident] = morph  # type: ignore[assignment]
            deployments[ident] = dict(doc.mapping(settings or {}, (*at, "deploy", ident)))
        subsystems = entry.get("subsystems") or []
        if not isinstance(subsystems, list):
            raise doc.error((*at, "subsystems"), f"must be a list, not {_kind(subsystems)}")
        return ClusterSystem(
            morph=morph,  # type: ignore[arg-type]
            deploy_defaults=dict(defaults),
            deploy=deployments,
            subsystems=tuple(self._cluster_system(doc, s, (*at, "subsystems", i), seen)
                             for i, s in enumerate(subsystems)),
        )
