"""Where a definitions tree is read from: a directory, or a git commit without a checkout."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from distbuild.errors import DefinitionsError


class TreeSource(Protocol):
    """Read-only access to the files of one definitions tree, by relative path."""

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None if there is no such file."""

    def describe(self) -> str:
        """A short name for messages (a directory, or repo@commit)."""


def _normal(path: str) -> str | None:
    """`path` without leading ./ and with no way out of the tree, or None if it escapes."""
    parts: list[str] = []
    for part in path.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            return None
        parts.append(part)
    return "/".join(parts) if parts else None


class DirectorySource:
    """A definitions tree in a directory (a checkout, or any copy)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DefinitionsError("definitions directory does not exist", str(root))

    def read(self, path: str) -> bytes | None:
        rel = _normal(path)
        if rel is None:
            return None
        try:
            return (self.root / rel).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def describe(self) -> str:
        return str(self.root)


class GitSource:
    """A definitions tree at one commit of a git repository, read with GitPython."""

    def __init__(self, repo_path: str | Path, rev: str):
        import git  # imported here: directory trees must not pay for GitPython

        try:
            self._repo = git.Repo(str(repo_path))
            self.commit = self._repo.commit(rev)
        except (git.exc.NoSuchPathError, git.exc.InvalidGitRepositoryError):
            raise DefinitionsError("not a git repository", str(repo_path)) from None
        except (git.exc.BadName, ValueError):
            raise DefinitionsError(f"no commit '{rev}' in this repository",
                                   str(repo_path)) from None
        self._tree = self.commit.tree
        self._name = f"{repo_path}@{self.commit.hexsha[:12]}"
        # directory -> {name: object}. GitPython's `tree / path` parses every tree on
        # the way again for each file, so a stratum of N chunks in one directory cost
        # N parses of that directory (N^2 entries).
        self._dirs: dict[str, dict | None] = {}

    def read(self, path: str) -> bytes | None:
        rel = _normal(path)
        if rel is None:
            return None
        folder, _, name = rel.rpartition("/")
        obj = (self._entries(folder) or {}).get(name)
        if obj is None or obj.type != "blob":
            return None
        return obj.data_stream.read()

    def _entries(self, folder: str) -> dict | None:
        """The entries of directory `folder` by name, or None if it is not a directory."""
        if folder in self._dirs:
            return self._dirs[folder]
        if folder:
            parent, _, name = folder.rpartition("/")
            tree = (self._entries(parent) or {}).get(name)
        else:
            tree = self._tree
        entries = {o.name: o for o in tree} if tree is not None and tree.type == "tree" else None
        self._dirs[folder] = entries
        return entries

    def describe(self) -> str:
        return self._name

    def close(self) -> None:
        """End the `git cat-file` processes GitPython keeps open for this repository."""
        self._repo.close()
