import pytest

from distbuild import tokens

SECRET = b"s" * 32
KEY = "a" * 64


def test_issued_token_verifies_for_its_key():
    tokens.verify(SECRET, KEY, tokens.issue(SECRET, KEY, ttl=60))


def test_token_for_another_key_is_refused():
    token = tokens.issue(SECRET, "b" * 64, ttl=60)
    with pytest.raises(tokens.TokenError, match="not issued for this key"):
        tokens.verify(SECRET, KEY, token)


def test_token_from_another_secret_is_refused():
    token = tokens.issue(b"x" * 32, KEY, ttl=60)
    with pytest.raises(tokens.TokenError, match="not issued"):
        tokens.verify(SECRET, KEY, token)


def test_expired_token_is_refused():
    token = tokens.issue(SECRET, KEY, ttl=10, now=1000)
    tokens.verify(SECRET, KEY, token, now=1005)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(SECRET, KEY, token, now=1011)


def test_extending_the_expiry_breaks_the_mac():
    expires, mac = tokens.issue(SECRET, KEY, ttl=10, now=1000).split(".")
    with pytest.raises(tokens.TokenError, match="not issued"):
        tokens.verify(SECRET, KEY, f"{int(expires) + 3600}.{mac}", now=1000)


@pytest.mark.parametrize("bad", ["", "abc", "1.2.3", "x.deadbeef", "1." + "0" * 500])
def test_malformed_tokens_are_refused(bad):
    with pytest.raises(tokens.TokenError):
        tokens.verify(SECRET, KEY, bad)


def test_secret_file_errors_name_the_file(tmp_path):
    with pytest.raises(tokens.TokenError, match="does not exist"):
        tokens.read_secret(tmp_path / "nope")
    (tmp_path / "short").write_text("abc\n")
    with pytest.raises(tokens.TokenError, match="short"):
        tokens.read_secret(tmp_path / "short")
    (tmp_path / "ok").write_text(tokens.new_secret() + "\n")
    assert len(tokens.read_secret(tmp_path / "ok")) == 64


def test_write_secret_is_private_and_readable(tmp_path):
    import os
    import stat
    tokens.write_secret(tmp_path / "keys" / "secret")
    assert stat.S_IMODE(os.stat(tmp_path / "keys" / "secret").st_mode) == 0o600
    assert len(tokens.read_secret(tmp_path / "keys" / "secret")) == 64
    with pytest.raises(FileExistsError):
        tokens.write_secret(tmp_path / "keys" / "secret")
