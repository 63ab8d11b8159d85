"""Read a config file: TOML, ``${VAR}`` expansion, validation against the models in
``config``, and every problem rendered as ``key.path: message`` in one ``ConfigError``.

Secrets are ``SecretStr`` and no message ever echoes a value that was given for a secret.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from functools import partial
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from mcsync.config.models import (
    CROSS_CHECK_ERROR,
    AudienceConfig,
    CiviCRMConfig,
    Config,
    MailchimpAccount,
    MailchimpConfig,
    SyncConfig,
    cross_check,
    toml_key,
)
from mcsync.errors import ConfigError

CONFIG_ENV_VAR = "MCSYNC_CONFIG"
DEFAULT_CONFIG_NAME = "mcsync.toml"
_ENV_REF = re.compile(r"\$(?:(\$)|\{([^}]*)\}|(\{))")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Where a key belongs when it was written in the wrong table (TOML's most common slip).
_HOMES: list[tuple[type[BaseModel], str]] = [
    (Config, "the top of the file (before the first [table])"),
    (SyncConfig, "[sync]"),
    (CiviCRMConfig, "[civicrm]"),
    (MailchimpAccount, "[mailchimp.accounts.<name>]"),
    (AudienceConfig, "an [[audience]] table"),
]


def default_config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$MCSYNC_CONFIG``, else ``./mcsync.toml``."""
    env = os.environ if environ is None else environ
    configured = env.get(CONFIG_ENV_VAR)
    return Path(configured).expanduser() if configured else Path(DEFAULT_CONFIG_NAME)


def config_file_is_private(path: Path | str) -> bool:
    """False when the group or others may read the file (it usually holds keys or references)."""
    mode = Path(path).stat().st_mode
    return not mode & (stat.S_IRGRP | stat.S_IROTH)


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Config:
    """Read, expand and validate a config file, or raise ``ConfigError`` listing every problem."""
    path = Path(path)
    data = _read_toml(path)
    problems, failed_paths = expand_variables(data, os.environ if environ is None else environ)
    try:
        config = Config.model_validate(data, context={"base_dir": path.parent.absolute()})
    except ValidationError as exc:
        problems += [
            problem for loc, problem in _render_errors(exc) if _path(loc) not in failed_paths
        ]
    problems += cross_check(data)
    if problems:
        raise ConfigError(_redact(problems, data)) from None
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        if path.is_dir():
            raise ConfigError(f"{path}: is a directory; give the path of the TOML file")
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; copy config.example.toml there, or pass --config PATH "
            f"or set ${CONFIG_ENV_VAR}"
        ) from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read the file (permission denied)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None


def expand_variables(data: Any, environ: Mapping[str, str]) -> tuple[list[str], set[str]]:
    """Replace ``${VAR}`` in every string value in place; ``$$`` is a literal ``$``.

    Returns the problems and the key paths they were found at (validation errors there are
    consequences, not news). A value that failed expansion becomes "".
    """
    problems: list[str] = []
    failed: set[str] = set()
    for loc, container, slot, text in list(_strings(data, ())):
        errors: list[str] = []
        container[slot] = _ENV_REF.sub(partial(_substitute, environ=environ, errors=errors), text)
        if errors:
            container[slot] = ""
            failed.add(_path(loc))
            problems += [f"{_path(loc)}: {error}" for error in errors]
    return problems, failed


def _strings(node: Any, loc: tuple[str | int, ...]) -> Iterator[tuple[Any, Any, Any, str]]:
    if isinstance(node, dict):
        items: Iterator[tuple[Any, Any]] = iter(node.items())
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for slot, value in items:
        if isinstance(value, str):
            yield (*loc, slot), node, slot, value
        else:
            yield from _strings(value, (*loc, slot))


def _substitute(match: re.Match[str], *, environ: Mapping[str, str], errors: list[str]) -> str:
    dollar, name, unterminated = match.groups()
    if dollar:
        return "$"
    if unterminated:
        errors.append("unterminated ${ (write $$ for a literal dollar sign)")
    elif not _ENV_NAME.fullmatch(name):
        errors.append(f"${{{name}}} is not a valid environment variable name")
    elif name not in environ:
        errors.append(f"environment variable {name} is not set")
    else:
        return environ[name]
    return ""


def _render_errors(exc: ValidationError) -> Iterator[tuple[tuple[str | int, ...], str]]:
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(part for part in error["loc"] if part != "[key]")
        if error["type"] == CROSS_CHECK_ERROR:
            continue  # load_config reports these from the raw data, including invalid files
        yield loc, f"{_path(loc) or '(top level)'}: {_message(error, loc)}"


def _message(error: Any, loc: tuple[str | int, ...]) -> str:
    kind, msg = error["type"], str(error["msg"]).removeprefix("Value error, ")
    field = _field_at(loc)
    if kind == "missing":
        return _missing(loc)
    if kind == "extra_forbidden":
        return _unknown_key(loc)
    if kind == "list_type" and loc == ("audience",):
        return "must be a list of tables: write each one as [[audience]] (double brackets)"
    if kind == "too_short" and field is not None and field.description:
        return f"is empty; {field.description}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a table, e.g. [{_path(loc)}]"
    if msg.startswith("Input should be"):
        about = f" ({field.description})" if field is not None and field.description else ""
        return msg.replace("Input should be", "must be", 1) + about
    return msg


def _missing(loc: tuple[str | int, ...]) -> str:
    field = _field_at(loc)
    name = loc[-1]
    annotation = _unwrap(field.annotation) if field is not None else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        table = "mailchimp.accounts.<name>" if annotation is MailchimpConfig else _path(loc)
        return f"required table is missing; add a [{table}] table"
    if get_origin(annotation) is dict:
        return f"required table is missing; add a [{_path(loc)}.<name>] table"
    if field is not None and field.examples:
        example = json.dumps(field.examples[0])
        return f"required key is missing; add {name} = {example} ({field.description})"
    about = f" ({field.description})" if field is not None and field.description else ""
    return f"required key is missing; add it{about}"


def _unknown_key(loc: tuple[str | int, ...]) -> str:
    key = str(loc[-1])
    parent = _model_at(loc[:-1])
    valid = list(parent.model_fields) if parent is not None else []
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f'unknown key; did you mean "{close[0]}"?'
    homes = [where for model, where in _HOMES if key in model.model_fields and model is not parent]
    if homes:
        return f"unknown key here; {key} belongs in {' or '.join(homes)}"
    return f"unknown key; valid keys here: {', '.join(valid)}"


def _model_at(loc: tuple[str | int, ...]) -> type[BaseModel] | None:
    annotation: Any = Config
    for part in loc:
        annotation = _unwrap(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif get_origin(annotation) in (list, dict):
            annotation = get_args(annotation)[-1]
        else:
            return None
    annotation = _unwrap(annotation)
    is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return annotation if is_model else None


def _field_at(loc: tuple[str | int, ...]) -> Any:
    parent = _model_at(loc[:-1])
    return parent.model_fields.get(str(loc[-1])) if parent is not None else None


def _unwrap(annotation: Any) -> Any:
    """``X | None`` and ``Annotated[X, ...]`` -> ``X``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin is Union or origin is UnionType:
            args = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _path(loc: tuple[Any, ...]) -> str:
    """('audience', 1, 'interests', 'ab c') -> 'audience[1].interests."ab c"'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + toml_key(part)
    return out


def _redact(problems: list[str], data: Any) -> list[str]:
    """Belt and braces: scrub any value given for a *key* field from every message."""
    secrets = sorted({s for s in _secret_values(data) if len(s) >= 6}, key=len, reverse=True)
    for secret in secrets:
        problems = [problem.replace(secret, "[redacted]") for problem in problems]
    return problems


def _secret_values(node: Any, key_name: str = "") -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _secret_values(value, str(key))
    elif isinstance(node, list):
        for value in node:
            yield from _secret_values(value, key_name)
    elif isinstance(node, str) and key_name.lower().endswith("key"):
        yield node
