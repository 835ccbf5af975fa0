from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distbuild import config
from distbuild.errors import ConfigError


@dataclass
class Example:
    trove_host: str
    port: int = 7878
    verbose: bool = False
    workers: list[str] = field(default_factory=list)
    state_dir: Path | None = None


def write(tmp_path, text):
    path = tmp_path / "distbuild.conf"
    path.write_text(text)
    return path


def test_upper_case_deployment_keys_read_as_lower_case(tmp_path):
    values = config.load(write(tmp_path, "TROVE_HOST: trove.example\nPORT: '7879'\nVERBOSE: yes\n"))
    got = config.section(Example, values, "distbuild.conf")
    assert got == Example(trove_host="trove.example", port=7879, verbose=True)


def test_command_line_override_wins_and_none_does_not(tmp_path):
    values = config.load(write(tmp_path, "trove_host: a\nport: 1\n"))
    got = config.section(Example, values, "f", trove_host="b", port=None)
    assert (got.trove_host, got.port) == ("b", 1)


def test_unknown_key_names_file_and_key(tmp_path):
    values = config.load(write(tmp_path, "trove_host: a\ntrove_hots: b\n"))
    with pytest.raises(ConfigError, match=r"^f: unknown key 'trove_hots'"):
        config.section(Example, values, "f")


def test_wrong_type_names_key(tmp_path):
    values = config.load(write(tmp_path, "trove_host: a\nport: many\n"))
    with pytest.raises(ConfigError, match=r"f: port: expected a whole number, got 'many'"):
        config.section(Example, values, "f")


def test_missing_required_key(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key.*trove_host"):
        config.section(Example, {}, "f")


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "a: 1\nb: [unclosed\n")
    with pytest.raises(ConfigError, match=r"distbuild.conf:\d+: YAML syntax error"):
        config.load(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")


def test_env_var_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv(config.CONFIG_ENV, str(tmp_path / "x.yaml"))
    assert config.config_path(None) == tmp_path / "x.yaml"
    assert config.config_path("y.yaml") == Path("y.yaml")


@dataclass
class Service:
    name: str
    key: Path
    port: int = 1


def test_component_settings_reads_its_section_relative_to_the_file(tmp_path):
    conf = tmp_path / "etc" / "distbuild.conf"
    conf.parent.mkdir()
    conf.write_text("TROVE_HOST: t\nworker:\n  name: w1\n  key: keys/worker_key\n")
    got = config.component_settings(Service, str(conf), "worker", port=7)
    assert got == Service(name="w1", key=tmp_path / "etc" / "keys" / "worker_key", port=7)
    # A command-line path stays as given, and a field called `name` is just a setting.
    got = config.component_settings(Service, str(conf), "worker", name="w2", key=Path("k"))
    assert (got.name, got.key) == ("w2", Path("k"))


def test_component_settings_section_must_be_a_mapping(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("worker: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"c.yaml: worker: the worker section must be a mapping"):
        config.component_settings(Service, str(conf), "worker")
