"""A service's settings: declared once, as a frozen dataclass, read by one loader.

Each service declares its settings as the fields of a frozen dataclass with
a class attribute ``env_prefix``; :func:`load` reads them from an environment
mapping. The composition root (the service's ``__main__``) calls it once with
``os.environ``; nothing else reads the environment, and tests build the
dataclass directly.

From each field come, with nothing written twice:

- the variable, ``<env_prefix>__<FIELD NAME IN CAPITALS>`` (the seeds'
  convention: ``GATEWAY__PORT``), unless :func:`setting` names another;
- the default, the field's default (a field without one is required);
- how the text is parsed, from the field's type: ``str``, ``int``,
  ``float``, ``bool`` (1/true/yes/on, 0/false/no/off), ``tuple[str, ...]``
  (a comma list), ``Path``, and any of them ``| None``;
- the meaning, the field's docstring (the string under it), which
  ``scripts/gen-config-docs`` writes into ``.env.example`` and
  ``docs/CONFIGURATION.md`` (:func:`env_example`, :func:`reference`).

An empty variable counts as unset. What a type cannot say goes in
:func:`setting`: a parser for the text, a check of the value, the value
``.env.example`` shows when it is not the default; :func:`tls_setting` reads a
:class:`mesh.grpc_server.TlsFiles` from three variables.

Every unusable value raises :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from mesh.tls import TlsFiles

C = TypeVar("C")

_SETTING = "mesh.config"
"""The key of a field's :class:`_Setting` in ``dataclasses.field(metadata=...)``."""


class ConfigError(ValueError):
    """A setting is missing or unusable; the message names its variable."""


@dataclasses.dataclass(frozen=True)
class _Setting:
    env: str | None = None
    parse: Callable[[str], Any] | None = None
    check: Callable[[Any], str | None] | None = None
    example: str | None = None
    tls: Mapping[str, tuple[str, str]] | None = None


def setting(
    default: Any = dataclasses.MISSING,
    *,
    env: str | None = None,
    parse: Callable[[str], Any] | None = None,
    check: Callable[[Any], str | None] | None = None,
    example: str | None = None,
) -> Any:
    """A field with what its type cannot say.

    ``env``: the variable's name after the prefix (default: the field's name
    in capitals). ``parse``: turns the text into the value; a ValueError it
    raises becomes a ConfigError naming the variable. ``check``: returns a
    problem (``"must be positive"``) or None; it sees values read from the
    environment, not the default. ``example``: what ``.env.example`` sets,
    when not the default (``${CODELAB_INTERNAL_API_KEY}``).
    """
    metadata = {_SETTING: _Setting(env=env, parse=parse, check=check, example=example)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("a mutable default")
    return dataclasses.field(default=default, metadata=metadata)


def tls_setting(**parts: tuple[str, str]) -> Any:
    """A :class:`TlsFiles` field read from three variables: ``cert``, ``key``
    and ``ca``, each given as (name after the prefix, meaning), documented in
    the order given."""
    if set(parts) != {"cert", "key", "ca"}:
        raise TypeError("tls_setting takes cert, key and ca")
    metadata = {_SETTING: _Setting(tls=parts)}
    return dataclasses.field(default_factory=TlsFiles, metadata=metadata)


def positive(value: float) -> str | None:
    """A ``check``: more than zero."""
    return None if value > 0 else "must be positive"


def not_negative(value: float) -> str | None:
    """A ``check``: zero or more."""
    return None if value >= 0 else "must not be negative"


def comma_list(text: str) -> tuple[str, ...]:
    """``a, b,,c`` → ``("a", "b", "c")``."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


class Variable(NamedTuple):
    """One environment variable of a service, for the generated docs."""

    name: str
    example: str
    """What ``.env.example`` sets: the default, or the setting's example."""
    meaning: str
    default: str = ""
    """The default as text; empty for none."""


def load(cls: type[C], environ: Mapping[str, str]) -> C:
    """Read ``cls`` (a config dataclass) from ``environ``; raises ConfigError."""
    prefix: str = cls.env_prefix  # type: ignore[attr-defined]
    values: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        spec = _spec(field)
        if spec.tls is not None:
            values[field.name] = TlsFiles(
                **{part: _text(environ, f"{prefix}__{env}") for part, (env, _) in spec.tls.items()}
            )
            continue
        name = f"{prefix}__{spec.env or field.name.upper()}"
        raw = environ.get(name) or None
        if raw is None:
            if field.default is dataclasses.MISSING:
                raise ConfigError(f"{name} must be set")
            continue
        value = _parse(name, raw, spec.parse or _parser(cls, field))
        problem = spec.check(value) if spec.check is not None else None
        if problem is not None:
            raise ConfigError(f"{name}={raw!r} {problem}")
        values[field.name] = value
    return cls(**values)


def variables(cls: type) -> Iterator[Variable]:
    """Every variable ``cls`` reads, in field order, with its meaning.

    Raises ValueError for a field without a docstring: every variable is
    explained.
    """
    prefix: str = cls.env_prefix  # type: ignore[attr-defined]
    docs = _docstrings(cls)
    for field in dataclasses.fields(cls):
        spec = _spec(field)
        if spec.tls is not None:
            for env, meaning in spec.tls.values():
                yield Variable(f"{prefix}__{env}", "", meaning)
            continue
        name = f"{prefix}__{spec.env or field.name.upper()}"
        if field.name not in docs:
            raise ValueError(f"{cls.__name__}.{field.name} ({name}) has no docstring")
        default = _shown(field.default)
        example = spec.example if spec.example is not None else default
        yield Variable(name, example, docs[field.name], default)


def env_example(header: str, sections: Sequence[tuple[str, type]], footer: str) -> str:
    """``.env.example``: ``header``, each (title, config class) as a commented
    block of ``NAME=default`` lines, then ``footer``."""
    parts = [header.rstrip("\n") + "\n"]
    for title, cls in sections:
        lines = [f"# --- {title} ".ljust(79, "-")]
        for variable in variables(cls):
            lines += [f"# {line}" for line in _wrap(variable.meaning, 98)]
            lines.append(f"{variable.name}={variable.example}")
        parts.append("\n".join(lines) + "\n")
    parts.append(footer.rstrip("\n") + "\n")
    return "\n".join(parts)


def reference(intro: str, sections: Sequence[tuple[str, type]], shared: Sequence[Variable]) -> str:
    """``docs/CONFIGURATION.md``: one table per service, then ``shared``."""
    header = "| variable | default | meaning |\n|---|---|---|\n"

    def row(variable: Variable) -> str:
        shown = f" `{variable.example}` " if variable.example else " "
        return f"| `{variable.name}` |{shown}| {variable.meaning} |"

    parts = ["# Configuration reference\n", intro.rstrip("\n") + "\n"]
    for title, cls in sections:
        service = title.split(":", 1)[0]
        rows = "\n".join(row(v) for v in variables(cls))
        parts.append(f"## {service} (`{cls.env_prefix}__*`)\n\n" + header + rows + "\n")  # type: ignore[attr-defined]
    parts.append("## Shared\n\n" + header + "\n".join(row(v) for v in shared) + "\n")
    return "\n".join(parts)


def _spec(field: dataclasses.Field[Any]) -> _Setting:
    spec = field.metadata.get(_SETTING)
    return spec if isinstance(spec, _Setting) else _Setting()


def _text(environ: Mapping[str, str], name: str) -> str:
    return environ.get(name) or ""


def _parse(name: str, raw: str, parse: Callable[[str], Any]) -> Any:
    try:
        return parse(raw)
    except _Unparsable as exc:
        raise ConfigError(f"{name}={raw!r} is not {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{name}: {exc}") from None


class _Unparsable(ValueError):
    """The text is not of the field's type; the message names the type."""


def _parser(cls: type, field: dataclasses.Field[Any]) -> Callable[[str], Any]:
    kind = typing.get_type_hints(cls)[field.name]
    if isinstance(kind, types.UnionType):
        options = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(options) == 1:
            kind = options[0]
    if kind is str:
        return str
    if kind is int:
        return _number(int, "an integer")
    if kind is float:
        return _number(float, "a number")
    if kind is bool:
        return boolean
    if kind is Path:
        return Path
    if kind == tuple[str, ...]:
        return comma_list
    raise TypeError(f"{cls.__name__}.{field.name}: no parser for {kind}; give setting(parse=...)")


def _number(kind: type[float] | type[int], what: str) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        try:
            return kind(text)
        except ValueError:
            raise _Unparsable(what) from None

    return parse


def boolean(text: str) -> bool:
    """A setting's text as a boolean: 1/true/yes/on or 0/false/no/off (any case)."""
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise _Unparsable("a boolean")


def _shown(default: Any) -> str:
    """A default as ``.env.example`` writes it."""
    if default is dataclasses.MISSING or default is None:
        return ""
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, tuple):
        return ",".join(str(item) for item in default)
    return str(default)


def _docstrings(cls: type) -> dict[str, str]:
    """Field name → its docstring, read from ``cls``'s source, on one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    found: dict[str, str] = {}
    for statement, following in itertools.pairwise(body):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            found[statement.target.id] = " ".join(inspect.cleandoc(following.value.value).split())
    return found


def _wrap(text: str, width: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines
