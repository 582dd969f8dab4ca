"""Settings of `messenger serve`: derived from ServerConfig, flag > env > file > default, a replica config file."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from grpc_messenger.cli.serve import serve
from grpc_messenger.cli.serve_settings import load_file, resolve, serve_fields
from grpc_messenger.config import ServerConfig
from grpc_messenger.errors import InvalidInput
from grpc_messenger.launch import ServeProcess
from tests.cli_support import messenger


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_config_field_is_a_serve_option_with_the_config_default() -> None:
    flags = {opt for param in serve.params for opt in getattr(param, "opts", ())}
    for f in serve_fields():
        assert f.flag in flags, f.name
    assert {f.name for f in serve_fields()} == {f.name for f in fields(ServerConfig)}
    nothing = resolve({}, config_file=None, environ={})
    assert nothing.config == ServerConfig()
    assert set(nothing.sources.values()) == {"default"}


def test_the_original_flags_still_name_their_settings() -> None:
    by_name = {f.name: f.flag for f in serve_fields()}
    assert by_name["grace_s"] == "--grace"
    assert by_name["quota_messages_max"] == "--quota-messages"
    assert by_name["send_rate_per_s"] == "--send-rate"
    assert by_name["peers"] == "--peer"
    assert by_name["repair_interval_s"] == "--repair-interval"
    assert by_name["peer_token"] == "--peer-token-file"


SOURCES = ("flag", "env", "file")


@given(present=st.sets(st.sampled_from(SOURCES)))
def test_flag_beats_env_beats_file_beats_default(tmp_path_factory: pytest.TempPathFactory, present: set[str]) -> None:
    root = tmp_path_factory.mktemp("precedence")
    values = {"flag": "127.0.0.1:1001", "env": "127.0.0.1:1002", "file": "127.0.0.1:1003"}
    flags = {"metrics_listen": values["flag"]} if "flag" in present else {}
    environ = {"MESSENGER_METRICS_LISTEN": values["env"]} if "env" in present else {}
    config_file = write(root / "replica.toml", f'metrics_listen = "{values["file"]}"\n') if "file" in present else None
    resolved = resolve(flags, config_file=config_file, environ=environ)
    expected = next((s for s in SOURCES if s in present), "default")
    assert resolved.sources["metrics_listen"] == expected
    assert resolved.config.metrics_listen == values.get(expected)


def test_file_values_are_typed_and_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    write(tmp_path / "peer.token", "sekrit\n")
    config_file = write(
        tmp_path / "replica.toml",
        'listen = ["127.0.0.1:0", "[::1]:0"]\ndata_dir = "data"\npeers = "127.0.0.1:7001, 127.0.0.1:7002"\n'
        'grace_s = 3\nstore = "memory"\ninsecure = true\npeer_token_file = "peer.token"\n',
    )
    resolved = resolve({"grace_s": 1.5}, config_file=config_file, environ={"MESSENGER_PEERS": "127.0.0.1:7003"})
    config = resolved.config
    assert config.listen == ("127.0.0.1:0", "[::1]:0")
    assert config.data_dir == tmp_path / "data"
    assert config.peers == ("127.0.0.1:7003",)  # env beats file
    assert resolved.sources["peers"] == "env"
    assert config.grace_s == 1.5
    assert resolved.sources["grace_s"] == "flag"
    assert (config.store, config.insecure, config.peer_token) == ("memory", True, "sekrit")
    shown = {row.name: row for row in resolved.rows()}
    assert shown["peer_token"].shown == "(set)"
    assert "sekrit" not in json.dumps([row.to_dict() for row in resolved.rows()])


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("grace = 3\n", "unknown keys grace"),
        ("grace_s = 'soon'\n", "grace_s must be a number"),
        ("batch_messages_max = 1.5\n", "batch_messages_max must be an integer"),
        ("insecure = 1\n", "insecure must be true or false"),
        ("listen = 5\n", "listen must be a list"),
        ("peers = ['nowhere']\n", "peers: address 'nowhere' is not host:port"),
        ("store = 'paper'\n", "store must be one of sqlite, memory"),
        ("tls_cert = 'missing.pem'\n", "does not exist"),
        ("ready_file = 'r.json'\n", "unknown keys ready_file"),
        ("listen = [\n", "replica config file"),
    ],
)
def test_bad_config_files_are_refused_naming_the_file_and_key(tmp_path: Path, text: str, complaint: str) -> None:
    config_file = write(tmp_path / "replica.toml", text)
    with pytest.raises(InvalidInput, match=complaint) as refused:
        load_file(config_file)
    assert str(config_file) in str(refused.value)


def test_bad_environment_values_name_the_variable() -> None:
    with pytest.raises(InvalidInput, match="MESSENGER_LISTEN"):
        resolve({}, config_file=None, environ={"MESSENGER_LISTEN": "no-port-here"})
    with pytest.raises(InvalidInput, match="env MESSENGER_PEER_TOKEN_FILE"):
        resolve({}, config_file=None, environ={"MESSENGER_PEER_TOKEN_FILE": "/nonexistent/peer.token"})


def test_config_show_says_where_each_setting_came_from(tmp_path: Path) -> None:
    serve_file = write(tmp_path / "replica.toml", "grace_s = 4\nsend_burst = 9\n")
    client_file = write(tmp_path / "client.toml", "write_quorum = 2\n")
    shown = messenger(
        "--config", str(client_file), "--servers", "127.0.0.1:1,127.0.0.1:2", "config", "show", "--json",
        env={"MESSENGER_SERVE_CONFIG": str(serve_file), "MESSENGER_DATA_DIR": str(tmp_path / "d"),
             "MESSENGER_HOME": str(tmp_path / "home")},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    client, replica = report["client"]["settings"], report["serve"]["settings"]
    assert client["servers"] == {"value": ["127.0.0.1:1", "127.0.0.1:2"], "source": "flag"}
    assert client["write_quorum"] == {"value": 2, "source": "file"}
    assert client["data_dir"] == {"value": str(tmp_path / "home"), "source": "env"}
    assert client["timeout_s"]["source"] == "default"
    assert client["token"] == {"value": False, "source": "default"}
    assert report["client"]["config_file"] == {"path": str(client_file), "source": "flag", "exists": True}
    assert replica["grace_s"] == {"value": 4.0, "source": "file"}
    assert replica["data_dir"] == {"value": str(tmp_path / "d"), "source": "env"}
    assert replica["store"] == {"value": "sqlite", "source": "default"}
    assert report["serve"]["config_file"]["source"] == "env"
    table = messenger("config", "show", env={"MESSENGER_SERVE_CONFIG": str(serve_file)})
    assert table.returncode == 0, table.stderr
    assert "send_burst" in table.stdout
    assert "file" in table.stdout


def test_serve_refuses_a_bad_config_file_in_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path / "replica.toml", "gracee_s = 3\n")
    done = messenger("serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"),
                     "--config-file", str(bad))  # fmt: skip
    assert done.returncode == 2
    assert "unknown keys gracee_s" in done.stderr
    assert "Traceback" not in done.stderr


def test_serve_runs_with_the_config_file_from_the_environment(tmp_path: Path) -> None:
    config_file = write(tmp_path / "replica.toml", 'metrics_listen = "127.0.0.1:0"\nstore = "memory"\n')
    replica = ServeProcess(
        data_dir=tmp_path / "r1", log_path=tmp_path / "r1.log", env={"MESSENGER_SERVE_CONFIG": str(config_file)}
    )
    try:
        ready = replica.start()
        assert ready.store == "memory"
        assert ready.metrics_address is not None
        assert replica.terminate() == 0
    finally:
        replica.kill()
