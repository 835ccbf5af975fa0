"""The message codec: every message round-trips; bad lines name the peer and the problem."""

import dataclasses
import typing

import pytest

from distbuild.protocol import MESSAGES, ProtocolError, decode, encode
from distbuild.protocol.messages import Hello, JobFailed, JobRun, StepOutput, WorkerReady

SAMPLES = {str: "text", int: 3, float: 1.5, bool: True, list: ["a"], dict: {"k": "v"}}


def value_for(hint):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, type(int | None)):
        return value_for(typing.get_args(hint)[0])
    if origin is list:
        return [value_for(typing.get_args(hint)[0])]
    return SAMPLES[origin or hint]


def sample(cls):
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: value_for(hints[f.name]) for f in dataclasses.fields(cls)})


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_every_message_round_trips(name):
    message = sample(MESSAGES[name])
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line, "peer") == message


def test_optional_fields_take_defaults_and_unknown_fields_are_ignored():
    got = decode(b'{"type":"job-failed","job":"j","reason":"r","later":1}', "w1")
    assert got == JobFailed(job="j", reason="r", exit_code=None, last_lines=[], cancelled=False)


def test_a_worker_that_does_not_say_prefetch_gets_no_hints_and_an_older_peer_ignores_it():
    # An older worker's worker-ready: no prefetch member, so no artifact-prefetch is sent.
    assert decode(b'{"type":"worker-ready","arch":"x86_64","slots":1}', "w1").prefetch is False
    # What an older controller makes of a newer worker's: the member is ignored.
    line = encode(WorkerReady(arch="x86_64", slots=1, prefetch=True))
    assert b'"prefetch":true' in line
    assert decode(line.replace(b'"prefetch":true', b'"later":true'), "w1") == WorkerReady(
        arch="x86_64", slots=1)


@pytest.mark.parametrize(("line", "message"), [
    (b"not json", "worker w1: sent a line that is not JSON"),
    (b'{"no":"type"}', "worker w1: sent a message without a type"),
    (b'{"type":"launch-missiles"}', "worker w1: sent an unknown message type"),
    (b'{"type":"hello","protocol":1,"role":"worker"}', "worker w1: hello: field 'name' is missing"),
    (b'{"type":"hello","protocol":"1","role":"w","name":"n"}',
     "worker w1: hello: field 'protocol' has the wrong type"),
    (b'{"type":"step-output","request_id":"r","step":"s","lines":[1]}',
     "worker w1: step-output: field 'lines' has the wrong type"),
])
def test_bad_lines_are_clear_errors(line, message):
    with pytest.raises(ProtocolError) as info:
        decode(line, "worker w1")
    assert str(info.value).startswith(message)


def test_booleans_are_not_numbers():
    with pytest.raises(ProtocolError, match="protocol' has the wrong type"):
        decode(b'{"type":"hello","protocol":true,"role":"w","name":"n"}', "p")


def test_shapes_used_on_the_wire():
    assert encode(Hello(protocol=1, role="worker", name="w1")).startswith(b'{"type":"hello",')
    run = JobRun(job="j", step={"id": "chunk:s/c"}, closure=[], trove_git_url="git://127.0.0.1",
                 artifact_cache_url="http://127.0.0.1:8080", token="t")
    assert decode(encode(run), "c").step == {"id": "chunk:s/c"}
    assert decode(encode(StepOutput(request_id="r", step="s", lines=["a", "b"])), "c").lines == [
        "a", "b"]


def test_a_pre_encoded_closure_goes_on_the_wire_as_its_items_would():
    """A closure given with its JSON text decodes to the same message as one given as dicts."""
    import json

    from distbuild.protocol.codec import Encoded

    nodes = [{"id": f"chunk-{i}", "cache_key": "k" * 64, "weird": "\"\\\n\u00e9"} for i in range(3)]
    texts = [json.dumps(n, separators=(",", ":")) for n in nodes]
    fields = dict(job="j1", step={"id": "top"}, trove_git_url="git://127.0.0.1/",
                  artifact_cache_url="http://127.0.0.1:1/", token="t", verify=True)
    plain = encode(JobRun(closure=list(nodes), **fields))
    spliced = encode(JobRun(closure=Encoded(nodes, texts), **fields))
    assert json.loads(spliced) == json.loads(plain)
    assert decode(spliced, "peer") == JobRun(closure=nodes, **fields)
    assert spliced.endswith(b"}\n") and spliced.count(b"\n") == 1
