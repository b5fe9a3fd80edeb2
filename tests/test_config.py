"""Config loading and validation: file, environment, token sources, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKEN, write_config

from exporter.config import ConfigError, load_settings, resolve_token

GOOD: dict[str, Any] = {
    "buddy": {"api_url": "https://api.eu.buddy.works/", "request_timeout_seconds": 5},
    "poll": {"interval_seconds": 30, "stale_after_seconds": 300},
    "targets": [{"workspace": "acme", "project": "shop", "pipeline_id": 1, "action_id": 2}],
}


def with_changes(**changes: Any) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    for dotted, new in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            data[section][key] = new
        else:
            data[section] = new
    return data


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, GOOD))
    assert settings.buddy.api_url == "https://api.eu.buddy.works"  # trailing slash dropped
    assert settings.buddy.request_timeout_seconds == 5
    assert settings.poll.interval_seconds == 30
    assert settings.web.listen_address == "0.0.0.0:8398"
    assert settings.targets[0].pipeline_id == 1


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDDY_EXPORTER_POLL__INTERVAL_SECONDS", "45.5")
    monkeypatch.setenv("BUDDY_EXPORTER_BUDDY__API_URL", "http://buddy.internal/api")
    settings = load_settings(write_config(tmp_path, GOOD))
    assert settings.poll.interval_seconds == 45.5
    assert settings.buddy.api_url == "http://buddy.internal/api"
    assert settings.poll.stale_after_seconds == 300  # untouched keys keep the file's value


def test_bad_environment_value_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUDDY_EXPORTER_POLL__INTERVAL_SECONDS", "soon")
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, GOOD))
    assert err.value.lines[0].startswith("poll.interval_seconds: ")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            with_changes(poll__interval_seconds=0),
            "poll.interval_seconds: Input should be greater than or equal to 0.1",
        ),
        (
            with_changes(poll__interval_seconds="often"),
            "poll.interval_seconds: Input should be a valid number",
        ),
        (
            with_changes(poll__stale_after_seconds=10),
            "poll: stale_after_seconds must be at least interval_seconds (10 < 30)",
        ),
        (with_changes(poll__intervall=5), "poll.intervall: unknown key"),
        (
            with_changes(buddy__api_url="api.buddy.works"),
            "buddy.api_url: must be an http:// or https:// URL",
        ),
        (
            with_changes(buddy__request_timeout_seconds=-1),
            "buddy.request_timeout_seconds: Input should be greater than 0",
        ),
        (with_changes(targets=[]), "targets: List should have at least 1 item"),
        (
            with_changes(
                targets=[
                    {"workspace": "acme", "project": "shop", "pipeline_id": "x", "action_id": 2}
                ]
            ),
            "targets[0].pipeline_id: Input should be a valid integer",
        ),
        (
            with_changes(targets=[{"workspace": "acme", "project": "shop", "action_id": 1}]),
            "targets[0]: action_id needs pipeline_id",
        ),
        (
            with_changes(targets=[{"workspace": "acme", "pipeline_id": 1}]),
            "targets[0]: pipeline_id needs project",
        ),
        (
            with_changes(targets=[{"workspace": "acme", "include": {"project": "(unclosed"}}]),
            "targets[0].include.project: not a valid regular expression: missing ), unterminated subpattern",
        ),
        (
            with_changes(targets=[{"workspace": "acme", "include": {"projects": "x"}}]),
            "targets[0].include.projects: unknown key",
        ),
        (
            with_changes(buddy__fetch_mode="sometimes"),
            "buddy.fetch_mode: Input should be 'auto', 'list' or 'get'",
        ),
        (
            with_changes(sharding={"shard": 3, "total_shards": 3}),
            "sharding: shard must be below total_shards (3 >= 3)",
        ),
        (
            with_changes(workspaces=[{"workspace": "a"}, {"workspace": "a"}]),
            "workspaces: a listed more than once",
        ),
        (
            with_changes(workspaces=[{"workspace": "a", "api_url": "nope"}]),
            "workspaces[0].api_url: must be an http:// or https:// URL",
        ),
        (
            with_changes(
                targets=[{"workspace": "a/b", "project": "shop", "pipeline_id": 1, "action_id": 2}]
            ),
            "targets[0].workspace: must be a URL handle",
        ),
        ({k: v for k, v in GOOD.items() if k != "targets"}, "targets: required key is missing"),
        ({**GOOD, "extra": 1}, "extra: unknown key"),
        (with_changes(web={"listen_address": "8398"}), "web.listen_address: must be HOST:PORT"),
        (
            with_changes(log={"level": "loud"}),
            "log.level: Input should be 'debug', 'info', 'warning' or 'error'",
        ),
    ],
)
def test_bad_config_gives_one_line_naming_the_field(
    tmp_path: Path, data: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, data))
    assert len(err.value.lines) == 1, err.value.lines
    assert err.value.lines[0].startswith(expected), err.value.lines


def test_several_problems_give_several_lines(tmp_path: Path) -> None:
    data = with_changes(poll__interval_seconds=-1, buddy__api_url="ftp://x")
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, data))
    assert sorted(line.split(":")[0] for line in err.value.lines) == [
        "buddy.api_url",
        "poll.interval_seconds",
    ]


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config.file: cannot read .*nope.yaml: No such file"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("poll:\n  interval_seconds: [1\n")
    with pytest.raises(ConfigError, match=r"config.file: .* is not valid YAML at line \d+"):
        load_settings(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_settings(listy)


def test_token_from_environment_beats_file_and_inline(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    settings = load_settings(
        write_config(
            tmp_path, with_changes(buddy__token_file=str(token_file), buddy__token="inline")
        )
    )
    assert (
        resolve_token(settings.buddy, {"BUDDY_TOKEN": "from-env"}).get_secret_value() == "from-env"
    )
    assert resolve_token(settings.buddy, {}).get_secret_value() == "from-file"  # newline stripped


def test_inline_token_is_used_last_and_never_printed(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path, with_changes(buddy__token=TOKEN)))
    assert resolve_token(settings.buddy, {}).get_secret_value() == TOKEN
    assert TOKEN not in repr(settings) and TOKEN not in str(settings.buddy)


@pytest.mark.parametrize(
    ("buddy", "expected"),
    [
        ({}, "buddy.token: no token given: set BUDDY_TOKEN, buddy.token_file or buddy.token"),
        (
            {"token_file": "/nonexistent/token"},
            "buddy.token_file: cannot read /nonexistent/token: No such file",
        ),
        ({"token": "  "}, "buddy.token: is empty"),
    ],
)
def test_token_problems_are_config_errors(
    tmp_path: Path, buddy: dict[str, str], expected: str
) -> None:
    settings = load_settings(
        write_config(tmp_path, with_changes(**{f"buddy__{k}": v for k, v in buddy.items()}))
    )
    with pytest.raises(ConfigError) as err:
        resolve_token(settings.buddy, {})
    assert err.value.lines[0].startswith(expected)


def test_empty_token_file_is_rejected(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    settings = load_settings(
        write_config(tmp_path, with_changes(buddy__token_file=str(token_file)))
    )
    with pytest.raises(ConfigError, match=r"buddy\.token_file: .* is empty"):
        resolve_token(settings.buddy, {})


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True,
                          timeout=30, env=env or {"PATH": "/usr/bin:/bin"})  # fmt: skip


def test_cli_bad_config_exits_2_with_field_lines_and_no_traceback(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_changes(poll__interval_seconds="x", buddy__token=TOKEN))
    result = _cli("--config.file", str(path))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "poll.interval_seconds: Input should be a valid number, unable to parse string as a number"
    ]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "--config.file: required (or set BUDDY_EXPORTER_CONFIG)"),
        (["--config.file", "/nonexistent.yaml"], "config.file: cannot read /nonexistent.yaml"),
        (["--web.listen-address", "nope"], "--web.listen-address: must be HOST:PORT"),
        (["--log.level", "loud"], "argument --log.level: invalid choice"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
        (
            ["--shard", "2", "--total-shards", "2"],
            "--shard/--total-shards: shard must be below total_shards (2 >= 2)",
        ),
        (
            ["--total-shards", "0"],
            "--shard/--total-shards: Input should be greater than or equal to 1",
        ),
        (["--shard", "x"], "argument --shard: invalid int value: 'x'"),
    ],
)
def test_cli_errors_exit_2(tmp_path: Path, args: list[str], expected: str) -> None:
    if args[:1] in (["--web.listen-address"], ["--shard"], ["--total-shards"]):
        args = [
            "--config.file",
            str(write_config(tmp_path, with_changes(buddy__token=TOKEN))),
            *args,
        ]
    result = _cli(*args)
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_missing_token_exits_2(tmp_path: Path) -> None:
    result = _cli("--config.file", str(write_config(tmp_path, GOOD)))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("buddy.token: no token given")


def test_config_file_from_environment_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, with_changes(poll__interval_seconds="x"))
    result = _cli(env={"PATH": "/usr/bin:/bin", "BUDDY_EXPORTER_CONFIG": str(path)})
    assert result.returncode == 2
    assert result.stderr.startswith("poll.interval_seconds:")


def test_version_and_help_do_not_need_config() -> None:
    version = _cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("buddy-exporter ")
    helptext = _cli("--help", env={"PATH": "/usr/bin:/bin", "BUDDY_TOKEN": TOKEN})
    assert helptext.returncode == 0 and "--config.file" in helptext.stdout
    assert TOKEN not in helptext.stdout + helptext.stderr


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config.example.yaml"
    settings = load_settings(example)
    assert settings.targets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("poll: {interval_seconds: 5}\npoll: {interval_seconds: 9}\n", "config.file: "),
        ("1: foo\ntargets: [{workspace: acme}]\n", "1: keys must be strings"),
        ("_env_prefix: FOO_\ntargets: [{workspace: acme}]\n", "_env_prefix: unknown key"),
        (
            "poll: {interval_seconds: 1e12, stale_after_seconds: 1e12}\ntargets: [{workspace: acme}]\n",
            "poll.interval_seconds: Input should be less than or equal to 86400",
        ),
        (
            "buddy: {api_url: 'http://127.0.0.1:99999'}\ntargets: [{workspace: acme}]\n",
            "buddy.api_url: is not a valid URL",
        ),
        (
            "buddy: {api_url: 'http://127.0.0.1:abc'}\ntargets: [{workspace: acme}]\n",
            "buddy.api_url: is not a valid URL",
        ),
        (
            "buddy: {api_url: 'http://[::1'}\ntargets: [{workspace: acme}]\n",
            "buddy.api_url: is not a valid URL",
        ),
        ('targets: [{workspace: "ac\\x01me"}]\n', "targets[0].workspace: must be a URL handle"),
        (
            "targets: [{workspace: acme, project: 'a?b=c'}]\n",
            "targets[0].project: must be a URL handle",
        ),
        (
            "targets: [{workspace: acme}]\nworkspaces: [{workspace: acme}, {workspace: ACME}]\n",
            "workspaces: acme listed more than once",
        ),
    ],
    ids=[
        "duplicate-key",
        "int-key",
        "pydantic-settings-option",
        "huge-interval",
        "port-too-big",
        "port-not-a-number",
        "bad-ipv6",
        "control-char-handle",
        "query-in-handle",
        "case-duplicate-workspace",
    ],
)
def test_hostile_config_files_are_clear_errors(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.lines[0].startswith(expected), err.value.lines
    if expected == "config.file: ":
        assert "key 'poll' is given twice (line 2)" in err.value.lines[0]


def test_unparseable_environment_value_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BUDDY_EXPORTER_TARGETS", "notjson")
    with pytest.raises(ConfigError) as err:
        load_settings(write_config(tmp_path, GOOD))
    assert err.value.lines == [
        "targets: cannot parse the environment variable BUDDY_EXPORTER_TARGETS* (complex values are JSON)"
    ]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            "first-half\nsecond-half\n",
            "the token holds whitespace, control or non-ASCII characters",
        ),
        ("tök-ünicode-secret", "the token holds whitespace, control or non-ASCII characters"),
        ("abc", "too short to be a Buddy token"),
    ],
)
def test_token_that_cannot_be_a_bearer_token_is_rejected_without_showing_it(
    tmp_path: Path, content: str, expected: str
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content)
    settings = load_settings(
        write_config(tmp_path, with_changes(buddy__token_file=str(token_file)))
    )
    with pytest.raises(ConfigError) as err:
        resolve_token(settings.buddy, {})
    assert err.value.lines == [f"buddy.token_file: {expected}"]
    assert "half" not in str(err.value) and "nicode" not in str(err.value)


def test_a_fifo_as_token_file_is_rejected_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "token"
    os.mkfifo(fifo)
    settings = load_settings(write_config(tmp_path, with_changes(buddy__token_file=str(fifo))))
    with pytest.raises(ConfigError, match=r"buddy\.token_file: .* is not a regular file"):
        resolve_token(settings.buddy, {})
