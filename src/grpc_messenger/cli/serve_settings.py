"""Where the settings of `messenger serve` come from: flag, then environment, then config file, then default.

Every option of `serve` is derived from a ServerConfig field and its `Setting`
(grpc_messenger.config): the field's default is the only default, the flag,
the environment variable and the config-file key all name that one field.
The replica config file is TOML whose keys are the field names:

    listen = ["0.0.0.0:50051"]
    data_dir = "/var/lib/messenger"      # relative paths: relative to this file
    peers = ["10.0.0.2:50051", "10.0.0.3:50051"]
    grace_s = 5
    peer_token_file = "peer.token"       # a secret is named by the file holding it

It is given with `serve --config-file F` or MESSENGER_SERVE_CONFIG; without
either there is none (a replica never picks up a file by surprise).
"""

from __future__ import annotations

import os
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import click

from grpc_messenger.config import ServerConfig, Setting, parse_listen
from grpc_messenger.errors import InvalidInput

F = TypeVar("F", bound=Callable[..., Any])
Source = Literal["flag", "env", "file", "default"]

CONFIG_ENV = "MESSENGER_SERVE_CONFIG"


@dataclass(frozen=True, slots=True)
class Field:
    """One ServerConfig field as a person sets it."""

    name: str
    setting: Setting
    default: Any
    kind: type  # the element type: str, int, float, bool or Path
    many: bool  # a tuple of them
    optional: bool  # None allowed

    @property
    def flag(self) -> str:
        """The `serve` flag."""
        return self.setting.flag or "--" + self.name.replace("_", "-")

    @property
    def param(self) -> str:
        """The click parameter name (the file key's name for values read from a file)."""
        return f"{self.name}_file" if self.setting.from_file else self.name

    @property
    def file_key(self) -> str:
        """The config-file key."""
        return self.param

    @property
    def path_like(self) -> bool:
        """True when the flag takes a path (also for values read from a file)."""
        return self.kind is Path or self.setting.from_file


def serve_fields() -> tuple[Field, ...]:
    """Every ServerConfig field, in declaration order."""
    hints = get_type_hints(ServerConfig)
    result = []
    for f in fields(ServerConfig):
        setting = f.metadata.get("setting") or Setting(help="")
        kind, many, optional = _shape(hints[f.name])
        assert f.default is not MISSING, f"ServerConfig.{f.name} needs a default"
        result.append(Field(f.name, setting, f.default, kind, many, optional))
    return tuple(result)


def _shape(hint: Any) -> tuple[type, bool, bool]:
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        assert len(args) == 1, hint
        hint, optional = args[0], True
    if get_origin(hint) is tuple:
        (inner, _) = get_args(hint)
        return inner, True, optional
    assert hint in (str, int, float, bool, Path), hint
    return hint, False, optional


# --- click options ---------------------------------------------------------------


class AddressList(click.ParamType[str, Any]):
    """host:port values; from the environment a comma- or space-separated list."""

    name = "host:port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            parse_listen(str(value))
        except InvalidInput as exc:
            self.fail(str(exc), param, ctx)
        return str(value)

    def split_envvar_value(self, rv: str) -> list[str]:
        return rv.replace(",", " ").split()


def _click_type(f: Field) -> click.ParamType[Any, Any]:
    if f.setting.from_file:
        return click.Path(dir_okay=False, exists=True, path_type=Path)
    if f.setting.choices:
        return click.Choice(f.setting.choices)
    if f.setting.address:
        return AddressList()
    if f.kind is Path:
        return click.Path(dir_okay=not f.setting.must_exist, exists=f.setting.must_exist, path_type=Path)
    if f.kind is int:
        return click.INT
    if f.kind is float:
        return click.FLOAT
    if f.kind is bool:
        return click.BOOL
    return click.STRING


def _default_text(f: Field) -> str | None:
    if f.setting.secret or f.default is None or f.default is False or f.default in ((), ""):
        return None
    if f.many:
        return ", ".join(str(v) for v in f.default)
    return str(f.default)


def _help(f: Field) -> str:
    notes = []
    if f.setting.env:
        notes.append(f"env {f.setting.env}")
    notes.append(f"file: {f.file_key}")
    default = _default_text(f)
    if default is not None:
        notes.append(f"default {default}")
    return f"{f.setting.help} [{'; '.join(notes)}]"


def serve_options(command: F) -> F:
    """Add one click option per ServerConfig field (no defaults: unset means "ask the next source")."""
    for f in reversed(serve_fields()):
        kwargs: dict[str, Any] = {"help": _help(f), "hidden": f.setting.hidden, "metavar": f.setting.metavar}
        if f.kind is bool and not f.many:
            option = click.option(f.flag, f.param, is_flag=True, default=None, **kwargs)
        else:
            option = click.option(f.flag, f.param, type=_click_type(f), multiple=f.many, default=None, **kwargs)
        command = option(command)
    return command


# --- resolution ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Resolved:
    """The effective replica settings and where each came from."""

    config: ServerConfig
    sources: Mapping[str, Source]  # field name -> source
    config_file: Path | None

    def rows(self) -> list[SettingRow]:
        """Every field people set, with its value and source."""
        return [
            SettingRow(f.name, getattr(self.config, f.name), self.sources[f.name], secret=f.setting.secret)
            for f in serve_fields()
            if not f.setting.hidden
        ]


@dataclass(frozen=True, slots=True)
class SettingRow:
    """One effective setting; a secret is shown only as set or not set."""

    name: str
    value: Any
    source: Source
    secret: bool = False

    @property
    def shown(self) -> str:
        """The value as one line of text."""
        if self.secret:
            return "(set)" if self.value else "(not set)"
        if self.value is None:
            return "-"
        if isinstance(self.value, tuple):
            return ",".join(str(v) for v in self.value) or "-"
        return str(self.value)

    def to_dict(self) -> dict[str, Any]:
        """{"value": ..., "source": ...} with JSON types (a secret's value is whether it is set)."""
        value = self.value
        if self.secret:
            value = bool(value)
        elif isinstance(value, tuple):
            value = [str(v) if isinstance(v, Path) else v for v in value]
        elif isinstance(value, Path):
            value = str(value)
        return {"value": value, "source": self.source}


def config_file_path(flag: Path | None) -> tuple[Path | None, Source | None]:
    """The replica config file: --config-file, else MESSENGER_SERVE_CONFIG, else none."""
    if flag is not None:
        return flag, "flag"
    if explicit := os.environ.get(CONFIG_ENV, "").strip():
        return Path(explicit), "env"
    return None, None


def resolve(
    flags: Mapping[str, Any],
    *,
    config_file: Path | None,
    environ: Mapping[str, str] | None = None,
) -> Resolved:
    """Build the ServerConfig: for each field the flag if given, else its env var, else the file, else the default.

    `flags` holds what was given on the command line, by click parameter name
    (absent or None/empty: not given). Raises InvalidInput for a bad value from
    any source, naming the source.
    """
    env = os.environ if environ is None else environ
    in_file = load_file(config_file) if config_file is not None else {}
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for f in serve_fields():
        given = flags.get(f.param)
        if given is not None and given != () and not (f.kind is bool and given is False):
            values[f.name], sources[f.name] = _from_flag(f, given), "flag"
        elif (from_env := _from_env(f, env)) is not None:
            values[f.name], sources[f.name] = from_env, "env"
        elif f.name in in_file:
            values[f.name], sources[f.name] = in_file[f.name], "file"
        else:
            sources[f.name] = "default"
    return Resolved(ServerConfig(**values), sources, config_file)


def _from_flag(f: Field, value: Any) -> Any:
    if f.setting.from_file:
        return _read_value_file(Path(value), what=f.flag)
    return tuple(value) if f.many else value


def _from_env(f: Field, env: Mapping[str, str]) -> Any:
    name = f.setting.env
    text = env.get(name, "").strip() if name else ""
    if not text and f.setting.value_env:
        value = env.get(f.setting.value_env, "").strip()
        return value or None
    if not text:
        return None
    assert name is not None
    if f.setting.from_file:
        return _read_value_file(Path(text), what=f"env {name}")
    kind = _click_type(f)
    parts = text.replace(",", " ").split() if f.many else [text]
    try:
        converted = [kind.convert(part, None, None) for part in parts]
    except click.BadParameter as exc:
        raise InvalidInput(f"env {name}: {exc.message}") from exc
    return tuple(converted) if f.many else converted[0]


def _read_value_file(path: Path, *, what: str) -> str:
    # from a file: kept out of `ps`, shell history and the config file itself
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise InvalidInput(f"{what}: cannot read {path}: {exc.strerror}") from exc


# --- the replica config file -----------------------------------------------------


def load_file(path: Path) -> dict[str, Any]:
    """Read a replica config file into ServerConfig field values; InvalidInput naming the file if bad."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"replica config file {path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"replica config file {path}: {exc}") from exc
    by_key = {f.file_key: f for f in serve_fields() if not f.setting.hidden}
    unknown = sorted(set(data) - set(by_key))
    if unknown:
        raise InvalidInput(
            f"replica config file {path}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(by_key))})"
        )
    return {by_key[key].name: _file_value(by_key[key], value, path) for key, value in data.items()}


def _file_value(f: Field, value: Any, path: Path) -> Any:
    where = f"replica config file {path}: {f.file_key}"
    if f.setting.from_file:
        return _read_value_file(_relative_to(path, _expect(str, value, where, "a path")), what=where)
    if f.many:
        if isinstance(value, str) and f.setting.address:
            value = value.replace(",", " ").split()
        if not isinstance(value, list):
            raise InvalidInput(f"{where} must be a list")
        return tuple(_scalar(f, item, path, where) for item in value)
    return _scalar(f, value, path, where)


def _scalar(f: Field, value: Any, path: Path, where: str) -> Any:
    if f.kind is bool:
        return _expect(bool, value, where, "true or false")
    if f.kind is int:
        if isinstance(value, bool):
            raise InvalidInput(f"{where} must be an integer")
        return _expect(int, value, where, "an integer")
    if f.kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidInput(f"{where} must be a number")
        return float(value)
    if f.kind is Path:
        resolved = _relative_to(path, _expect(str, value, where, "a path"))
        if f.setting.must_exist and not resolved.is_file():
            raise InvalidInput(f"{where}: {resolved} does not exist")
        return resolved
    text = _expect(str, value, where, "a string")
    if f.setting.choices and text not in f.setting.choices:
        raise InvalidInput(f"{where} must be one of {', '.join(f.setting.choices)}")
    if f.setting.address:
        try:
            parse_listen(text)
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from exc
    return text


def _expect(kind: type, value: Any, where: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise InvalidInput(f"{where} must be {what}")
    return value


def _relative_to(config_file: Path, value: str) -> Path:
    # relative paths are relative to the config file, not to where the command runs
    return config_file.parent / Path(value).expanduser()
