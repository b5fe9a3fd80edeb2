"""Configuration: the YAML file, environment overrides and the Buddy token.

Priority, highest first: command-line flags (applied by the CLI), environment
variables (``BUDDY_EXPORTER_`` prefix, ``__`` between levels), the YAML file,
defaults. The token comes from ``BUDDY_TOKEN``, else ``buddy.token_file``, else
``buddy.token``.
"""

from __future__ import annotations

import os
import re
import ssl
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

ENV_PREFIX = "BUDDY_EXPORTER_"
TOKEN_ENV = "BUDDY_TOKEN"  # noqa: S105 (a variable name, not a secret)
CONFIG_ENV = "BUDDY_EXPORTER_CONFIG"
DEFAULT_PORT = 8398
DEFAULT_LISTEN_ADDRESS = f"0.0.0.0:{DEFAULT_PORT}"


class ConfigError(Exception):
    """A configuration problem; ``lines`` holds one ``field: problem`` line each."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _check_api_url(value: str) -> str:
    value = value.strip()
    if not re.match(r"^https?://[^/\s]+", value) or not value.isascii() or not value.isprintable():
        raise ValueError("must be an http:// or https:// URL, e.g. https://api.buddy.works")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        raise ValueError(f"is not a valid URL: {exc}") from None
    if not parts.hostname:
        raise ValueError("has no host name")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    return value.rstrip("/")


def _check_listen_address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("must be HOST:PORT (e.g. 0.0.0.0:8398 or :8398)")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError("an IPv6 host must be in brackets, e.g. [::1]:8398")
    return value


_HANDLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _check_handle(value: str) -> str:
    if not _HANDLE.fullmatch(value):
        raise ValueError(
            "must be a URL handle: letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return value


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


def _check_ca_file(value: Path) -> Path:
    try:
        ssl.create_default_context(cafile=str(value))
    except ssl.SSLError as exc:  # before OSError: it is one
        reason = str(exc.reason or exc).replace("_", " ").lower()
        raise ValueError(f"cannot load {value} as PEM CA certificates: {reason}") from None
    except OSError as exc:
        raise ValueError(
            f"cannot load {value} as PEM CA certificates: {exc.strerror or exc}"
        ) from None
    return value


ApiUrl = Annotated[str, AfterValidator(_check_api_url)]
CaFile = Annotated[Path, AfterValidator(_check_ca_file)]
ListenAddress = Annotated[str, AfterValidator(_check_listen_address)]
Handle = Annotated[str, AfterValidator(_check_handle)]
Regex = Annotated[str, AfterValidator(_check_regex)]
# Upper bounds keep values inside what the scheduler and the clock can represent.
PositiveSeconds = Annotated[float, Field(gt=0, le=31_536_000, allow_inf_nan=False)]
PositiveRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveId = Annotated[int, Field(gt=0)]


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class StatusSeries(StrEnum):
    ALL = "all"
    CURRENT = "current"


class FetchMode(StrEnum):
    AUTO = "auto"
    LIST = "list"
    GET = "get"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuddyConfig(_Strict):
    """How to reach Buddy."""

    api_url: ApiUrl = "https://api.buddy.works"
    token: SecretStr | None = None
    token_file: Path | None = None
    request_timeout_seconds: Annotated[float, Field(gt=0, le=3600, allow_inf_nan=False)] = 10.0
    max_concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    fetch_mode: FetchMode = FetchMode.AUTO
    per_page: Annotated[int, Field(ge=1, le=1000)] = 30
    max_requests_per_second: PositiveRate = 10.0
    burst: Annotated[int, Field(ge=1, le=1000)] = 5
    max_retries: Annotated[int, Field(ge=0, le=10)] = 3
    retry_backoff_seconds: PositiveSeconds = 0.5
    max_response_bytes: Annotated[int, Field(ge=1024)] = 16 * 1024 * 1024
    ca_file: CaFile | None = None
    insecure_skip_verify: bool = False

    @model_validator(mode="after")
    def _one_way_to_verify(self) -> Self:
        if self.ca_file is not None and self.insecure_skip_verify:
            raise ValueError("ca_file and insecure_skip_verify exclude each other")
        return self


class PollConfig(_Strict):
    """When to poll and how long failed values are kept."""

    interval_seconds: Annotated[float, Field(ge=0.1, le=86_400, allow_inf_nan=False)] = 60.0
    stale_after_seconds: PositiveSeconds = 600.0
    discovery_interval_seconds: PositiveSeconds = 300.0

    @model_validator(mode="after")
    def _stale_not_shorter_than_interval(self) -> Self:
        if self.stale_after_seconds < self.interval_seconds:
            raise ValueError(
                "stale_after_seconds must be at least interval_seconds "
                f"({self.stale_after_seconds:g} < {self.interval_seconds:g})"
            )
        return self


class NameFilter(_Strict):
    """Anchored regular expressions on names; an unset key matches everything."""

    project: Regex | None = None
    pipeline: Regex | None = None
    action: Regex | None = None
    action_type: Regex | None = None


class Target(_Strict):
    """A scope to export: a workspace, a project, a pipeline or one action.

    What a target leaves out is discovered: a workspace alone means all its
    projects, pipelines and actions.
    """

    workspace: Handle
    project: Handle | None = None
    pipeline_id: PositiveId | None = None
    action_id: PositiveId | None = None
    include: NameFilter = NameFilter()
    exclude: NameFilter = NameFilter()
    include_disabled: bool = True
    include_closed_projects: bool = False

    @model_validator(mode="after")
    def _scope_is_a_path(self) -> Self:
        if self.action_id is not None and self.pipeline_id is None:
            raise ValueError("action_id needs pipeline_id")
        if self.pipeline_id is not None and self.project is None:
            raise ValueError("pipeline_id needs project")
        return self

    @property
    def scope(self) -> str:
        """``workspace``, ``project``, ``pipeline`` or ``action``."""
        if self.action_id is not None:
            return "action"
        if self.pipeline_id is not None:
            return "pipeline"
        return "project" if self.project is not None else "workspace"


class WorkspaceConfig(_Strict):
    """Connection settings of one workspace, when they differ from ``buddy``."""

    workspace: Handle
    api_url: ApiUrl | None = None
    token: SecretStr | None = None
    token_file: Path | None = None


class ShardingConfig(_Strict):
    """Which share of the pipelines this replica polls (kube-state-metrics style)."""

    shard: Annotated[int, Field(ge=0)] = 0
    total_shards: Annotated[int, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _shard_in_range(self) -> Self:
        if self.shard >= self.total_shards:
            raise ValueError(
                f"shard must be below total_shards ({self.shard} >= {self.total_shards})"
            )
        return self


class WebConfig(_Strict):
    listen_address: ListenAddress = DEFAULT_LISTEN_ADDRESS


class LogConfig(_Strict):
    level: LogLevel = LogLevel.INFO


class MetricsConfig(_Strict):
    status_series: StatusSeries = StatusSeries.ALL


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    buddy: BuddyConfig = BuddyConfig()
    poll: PollConfig = PollConfig()
    web: WebConfig = WebConfig()
    log: LogConfig = LogConfig()
    metrics: MetricsConfig = MetricsConfig()
    sharding: ShardingConfig = ShardingConfig()
    workspaces: list[WorkspaceConfig] = []
    targets: Annotated[list[Target], Field(min_length=1)]

    @field_validator("workspaces")
    @classmethod
    def _workspaces_are_unique(cls, value: list[WorkspaceConfig]) -> list[WorkspaceConfig]:
        names = [w.workspace.lower() for w in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"{', '.join(duplicates)} listed more than once")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML file arrives as init kwargs (see load_settings); the
        # environment comes first so that it overrides the file.
        return (env_settings, init_settings)


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + part)
    return "".join(parts) or "config"


def format_validation_error(error: ValidationError) -> list[str]:
    """One ``location: problem`` line per error, without pydantic's URLs."""
    lines = []
    for item in error.errors(include_url=False):
        loc = _location(tuple(p for p in item["loc"] if not str(p).startswith("function-")))
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "missing":
            message = "required key is missing"
        message = message.removeprefix("Value error, ")
        lines.append(f"{loc}: {message}")
    return lines


def read_config_file(path: Path) -> dict[str, Any]:
    """Read the YAML config file into a mapping, or raise ConfigError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"config.file: cannot read {path}: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"config.file: {path} is not UTF-8 text"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as exc:
        raise ConfigError([f"config.file: {path}: {exc}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError([f"config.file: {path} is not valid YAML{where}: {problem}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config.file: {path} must hold a mapping at the top level"])
    bad = list(_non_string_keys(data))
    if bad:
        raise ConfigError([f"{where}: keys must be strings" for where in bad])
    return data


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that rejects a key given twice (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                line = key_node.start_mark.line + 1
                raise _DuplicateKey(f"key {key!r} is given twice (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _non_string_keys(data: Any, where: str = "") -> Iterator[str]:
    if isinstance(data, dict):
        for key, item in data.items():
            here = f"{where}.{key}" if where else str(key)
            if not isinstance(key, str):
                yield here
            else:
                yield from _non_string_keys(item, here)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from _non_string_keys(item, f"{where}[{i}]")


def build_settings(data: Mapping[str, Any]) -> Settings:
    """Validate config data (plus the environment) into Settings, or raise ConfigError."""
    # pydantic-settings takes "_"-keys as its own options (_env_prefix, _env_file, ...).
    private = [f"{k}: unknown key" for k in data if not isinstance(k, str) or k.startswith("_")]
    if private:
        raise ConfigError(private)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    except SettingsError as exc:
        match = re.search(r'field "([^"]+)"', str(exc))
        field = match.group(1) if match else "environment"
        env = f"{ENV_PREFIX}{field.upper()}"
        raise ConfigError(
            [f"{field}: cannot parse the environment variable {env}* (complex values are JSON)"]
        ) from None


def load_settings(path: Path) -> Settings:
    """Read, merge with the environment and validate the config file."""
    return build_settings(read_config_file(path))


MAX_TOKEN_FILE_BYTES = 64 * 1024
MIN_TOKEN_LENGTH = 8
# What a bearer token can hold (RFC 6750): visible ASCII, no spaces.
_TOKEN = re.compile(r"[\x21-\x7e]+")


def _read_token_file(where: str, path: Path) -> str:
    try:
        if not stat.S_ISREG(path.stat().st_mode):  # a FIFO or a device would block or never end
            raise ConfigError([f"{where}: {path} is not a regular file"])
        with path.open("rb") as handle:
            raw = handle.read(MAX_TOKEN_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read {path}: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_TOKEN_FILE_BYTES:
        raise ConfigError([f"{where}: {path} is larger than a token file can be"])
    try:
        value = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: {path} is not UTF-8 text"]) from None
    if not value:
        raise ConfigError([f"{where}: {path} is empty"])
    return value


def checked_token(where: str, value: str) -> SecretStr:
    """``value`` as a secret, or ConfigError if it cannot be a bearer token."""
    value = value.strip()
    if not value:
        raise ConfigError([f"{where}: is empty"])
    if not _TOKEN.fullmatch(value):
        # Say what is wrong without showing any of the token.
        raise ConfigError([f"{where}: the token holds whitespace, control or non-ASCII characters"])
    if len(value) < MIN_TOKEN_LENGTH:
        raise ConfigError([f"{where}: too short to be a Buddy token"])
    return SecretStr(value)


def _token_from(where: str, token: SecretStr | None, token_file: Path | None) -> SecretStr | None:
    if token_file is not None:
        value = _read_token_file(f"{where}.token_file", token_file)
        return checked_token(f"{where}.token_file", value)
    if token is not None:
        return checked_token(f"{where}.token", token.get_secret_value())
    return None


def resolve_token(buddy: BuddyConfig, environ: Mapping[str, str] | None = None) -> SecretStr:
    """The Buddy token: ``BUDDY_TOKEN``, else ``token_file``, else ``token``."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV, "").strip():
        return checked_token(TOKEN_ENV, env[TOKEN_ENV])
    token = _token_from("buddy", buddy.token, buddy.token_file)
    if token is None:
        raise ConfigError(
            [f"buddy.token: no token given: set {TOKEN_ENV}, buddy.token_file or buddy.token"]
        )
    return token


@dataclass(frozen=True, slots=True)
class Connection:
    """Where and with what token one workspace is reached."""

    api_url: str
    token: SecretStr


def resolve_connections(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> dict[str, Connection]:
    """The connection of every workspace named by a target; raises ConfigError."""
    overrides = {w.workspace: (i, w) for i, w in enumerate(settings.workspaces)}
    default: SecretStr | None = None
    connections: dict[str, Connection] = {}
    for workspace in dict.fromkeys(t.workspace for t in settings.targets):
        index, override = overrides.get(workspace, (None, None))
        token = None
        if override is not None:
            token = _token_from(f"workspaces[{index}]", override.token, override.token_file)
        if token is None:
            default = default or resolve_token(settings.buddy, environ)
            token = default
        api_url = (override.api_url if override else None) or settings.buddy.api_url
        connections[workspace] = Connection(api_url, token)
    return connections
