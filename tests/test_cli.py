"""The CLI: useful --help everywhere, keys, the local model registry, refusing a public bind."""

from __future__ import annotations

import pytest

from modelmill import cli


def all_commands(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from all_commands(sub, prefix + (name,))


def test_every_command_has_help(capsys):
    commands = list(all_commands(cli.build_parser()))
    names = {" ".join(c) for c, _ in commands}
    assert {"serve", "worker", "demo", "models list", "models add", "files upload", "jobs create", "jobs list",
            "jobs watch", "jobs cancel", "jobs pause", "jobs resume", "keys create"} <= names
    for path, _ in commands:
        with pytest.raises(SystemExit) as ei:
            cli.main([*path, "--help"])
        assert ei.value.code == 0
        out = capsys.readouterr().out
        assert "usage: modelmill " + " ".join(path) in out


def test_keys_create_then_public_bind_needs_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "without API keys" in capsys.readouterr().err
    assert cli.main(["keys", "create", "--name", "ci"]) == 0
    key = capsys.readouterr().out.strip()
    assert len(key) >= 32
    from modelmill.service.core.auth import authenticate
    from modelmill.service.store import open_store
    from modelmill.settings import Settings

    settings = Settings.from_env(host="0.0.0.0")
    authenticate(settings, open_store(settings), f"Bearer {key}")  # accepted
    with pytest.raises(PermissionError):
        authenticate(settings, open_store(settings), "Bearer wrong")


def test_models_list_shows_builtins(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MODELMILL_HOME", str(tmp_path))  # restored after the test; the CLI exports --home
    assert cli.main(["models", "list", "--home", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "SmolLM2-135M-Instruct" in out and "modelmill-tiny" in out
