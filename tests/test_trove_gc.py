"""Garbage collection and pins against a real trove process, configured from YAML."""

import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from distbuild import tokens
from distbuild.trove.client import CacheClient, CacheClientError
from tests.conftest import run_distbuild
from tests.trove_process import TroveProcess

pytestmark = pytest.mark.slow


def put(client, trove, tmp_path, key, size=1000):
    path = tmp_path / key
    path.write_bytes(b"x" * size)
    client.upload_source(key, {f"{key}.chunk.a": path}, tokens.issue(trove.secret, key))


def cached(client, *keys):
    """Which sources are cached, asked without counting as a use (unlike cached_sources)."""
    answer = client.has_artifacts([f"{k}.chunk.a" for k in keys])
    return {k: answer[f"{k}.chunk.a"] for k in keys}


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_lru_collection_down_to_the_limit_keeps_pinned_sources(tmp_path):
    conf = tmp_path / "distbuild.yaml"
    conf.write_text(yaml.safe_dump({"trove": {"cache_size_limit": "2500", "gc_interval": 0.1},
                                    "trove_host": "ignored: another component's key"}))
    trove = TroveProcess(tmp_path / "t", config=conf).start()
    try:
        client = CacheClient(trove.cache_url)
        a, b, c, d = ("a1" * 32, "b2" * 32, "c3" * 32, "d4" * 32)
        with pytest.raises(CacheClientError, match="401"):
            client.pin("build-1", [a], token="")
        put(client, trove, tmp_path, a)
        client.pin("build-1", [a], tokens.issue(trove.secret, "pin:build-1"), ttl=600)
        put(client, trove, tmp_path, b)
        put(client, trove, tmp_path, c)
        # Over the limit: the least recently used unpinned source (b) goes.
        wait_for(lambda: cached(client, b) == {b: False})
        assert cached(client, a, c) == {a: True, c: True}
        client.unpin("build-1", tokens.issue(trove.secret, "pin:build-1"))
        time.sleep(0.01)
        put(client, trove, tmp_path, d)
        wait_for(lambda: cached(client, a) == {a: False})
        assert cached(client, c, d) == {c: True, d: True}
        assert "garbage collection removed" in trove.log()
        assert not list((trove.artifact_dir / "sources").rglob(f"{a}*"))
        # /metrics counts what happened: four uploads of 1000 bytes, two collected, the
        # pin without a token refused from its headers.
        with urllib.request.urlopen(trove.cache_url + "metrics", timeout=10) as r:
            text = r.read().decode()
        metrics = dict(line.rsplit(" ", 1) for line in text.splitlines()
                       if line and not line.startswith("#"))
        assert float(metrics['distbuild_trove_uploads_total{result="stored"}']) == 4
        assert float(metrics["distbuild_trove_upload_bytes_total"]) == 4000
        assert float(metrics["distbuild_trove_gc_removed_sources_total"]) == 2
        assert float(metrics['distbuild_trove_gc_passes_total{result="ok"}']) >= 2
        assert float(metrics['distbuild_trove_refusals_total{reason="no_token"}']) == 1
        assert float(metrics["distbuild_trove_stored_sources"]) == 2
        assert float(metrics["distbuild_trove_stored_artifacts"]) == 2
        assert float(metrics["distbuild_trove_stored_bytes"]) == 2000
        with urllib.request.urlopen(trove.cache_url, timeout=10) as r:
            assert "/metrics" in r.read().decode()  # the root names the endpoints
    finally:
        trove.stop()


def test_bad_trove_settings_are_one_line_errors(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"trove": {"git_dir": "g", "artifact_dir": "a",
                                              "cache_size_limit": "lots"}}))
    out = run_distbuild("trove", "--config", str(conf))
    assert out.returncode == 2
    assert out.stderr.strip() == (f"distbuild: error: {conf}: trove: cache_size_limit: "
                                  "expected a size such as 500M or 10G, got 'lots'")
    conf.write_text(yaml.safe_dump({"trove": {"git_dir": "g", "artifact_dir": "a",
                                              "http_prot": 1}}))
    out = run_distbuild("trove", "--config", str(conf))
    assert out.returncode == 2 and "unknown key 'http_prot'" in out.stderr
    out = run_distbuild("trove", "--git-dir", str(tmp_path / "g"))
    assert out.returncode == 2 and "missing required key(s): artifact_dir" in out.stderr


def test_relative_paths_in_the_config_file_are_relative_to_it(tmp_path):
    import argparse

    from distbuild.trove import gitdaemon, service

    conf = tmp_path / "state" / "network.yaml"
    conf.parent.mkdir()
    conf.write_text(yaml.safe_dump({"trove": {"git_dir": "git", "artifact_dir": "cache"}}))
    parser = argparse.ArgumentParser()
    service.add_arguments(parser)
    settings = service.settings_from(parser.parse_args(["--config", str(conf)]))
    assert settings.git_dir == tmp_path / "state" / "git"
    assert settings.artifact_dir == tmp_path / "state" / "cache"
    settings = service.settings_from(parser.parse_args(
        ["--config", str(conf), "--git-dir", "elsewhere"]))
    assert settings.git_dir == Path("elsewhere")
    # git daemon serves read-only, everything under git_dir, only on the given address.
    argv = gitdaemon.daemon_argv(settings.git_dir, "127.0.0.1", 9418)
    assert argv[0].endswith("git-daemon")
    assert {"--export-all", "--listen=127.0.0.1", "--disable=receive-pack",
            f"--base-path={settings.git_dir}"} <= set(argv)


def test_token_command_issues_what_the_trove_accepts(tmp_path):
    from distbuild import tokens

    secret = tmp_path / "secret"
    tokens.write_secret(secret)
    key = "ab" * 32
    out = run_distbuild("trove", "token", key, "--token-secret-file", str(secret), check=True)
    tokens.verify(tokens.read_secret(secret), key, out.stdout.strip())
    bad = run_distbuild("trove", "token", "../x", "--token-secret-file", str(secret))
    assert bad.returncode == 2 and "not a cache key" in bad.stderr
