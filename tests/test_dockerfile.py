"""Static checks of the Dockerfile and .dockerignore (no Docker daemon runs here).

hadolint lints the file; the tests below check the facts the image promises:
multi-stage venv build, numeric non-root user, exec-form entrypoint, the default
port, OCI labels, a curl-free healthcheck, nothing written at run time.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from tools import tool

from exporter.config import DEFAULT_PORT

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continuation line"
    return out


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    result: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse(DOCKERFILE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def runtime(instructions: list[Instruction]) -> list[Instruction]:
    return stages(instructions)[-1]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in stage if i.keyword == keyword]
    assert len(found) == 1, f"expected one {keyword} in the runtime stage, found {len(found)}"
    return found[0]


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_named_user(tmp_path: Path) -> None:
    # Guards the test above: the same file with a named user must be rejected (DL3066 family).
    bad = tmp_path / "Dockerfile"
    bad.write_text(
        DOCKERFILE.read_text(encoding="utf-8").replace("USER 10001:10001", "USER exporter"),
        encoding="utf-8",
    )
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True
    )
    assert result.returncode != 0, result.stdout


def test_build_is_multi_stage_and_copies_the_venv(instructions: list[Instruction]) -> None:
    all_stages = stages(instructions)
    assert len(all_stages) >= 2
    build_name = re.search(r"\bAS\s+(\S+)", all_stages[0][0].args, re.IGNORECASE)
    assert build_name, "the build stage needs a name"
    build_runs = " ".join(i.args for i in all_stages[0] if i.keyword == "RUN")
    assert "venv" in build_runs and "pip" in build_runs
    copies = [i.args for i in all_stages[-1] if i.keyword == "COPY"]
    assert any(f"--from={build_name.group(1)}" in c and "/opt/venv" in c for c in copies), copies
    # The runtime stage installs nothing itself.
    assert not [i for i in all_stages[-1] if i.keyword == "RUN"]


def test_runtime_runs_as_numeric_non_root_user(runtime: list[Instruction]) -> None:
    user = only(runtime, "USER").args
    assert re.fullmatch(r"\d+:\d+", user), user
    uid, gid = (int(x) for x in user.split(":"))
    assert uid == 10001 and gid == 10001
    # The USER comes after the COPY of the venv, so nothing later runs as root.
    keywords = [i.keyword for i in runtime]
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "COPY")


def test_entrypoint_is_exec_form_console_script(runtime: list[Instruction]) -> None:
    assert json.loads(only(runtime, "ENTRYPOINT").args) == ["buddy-exporter"]
    cmd = json.loads(only(runtime, "CMD").args)
    assert cmd[0].startswith("--config.file")


def test_exposes_the_exporters_default_port(runtime: list[Instruction]) -> None:
    assert only(runtime, "EXPOSE").args.split() == [str(DEFAULT_PORT)]
    assert DEFAULT_PORT == 8398


def test_oci_labels_with_version_and_revision_build_args(runtime: list[Instruction]) -> None:
    args = {i.args.split("=")[0] for i in runtime if i.keyword == "ARG"}
    assert {"VERSION", "REVISION"} <= args
    labels = " ".join(i.args for i in runtime if i.keyword == "LABEL")
    found = dict(re.findall(r'(org\.opencontainers\.image\.[a-z.]+)="([^"]*)"', labels))
    assert found.get("org.opencontainers.image.version") == "${VERSION}"
    assert found.get("org.opencontainers.image.revision") == "${REVISION}"
    for key in ("title", "description", "licenses"):
        assert found.get(f"org.opencontainers.image.{key}"), key


def test_healthcheck_needs_no_curl_and_hits_healthz(runtime: list[Instruction]) -> None:
    check = only(runtime, "HEALTHCHECK").args
    _, _, cmd = check.partition("CMD")
    argv = json.loads(cmd.strip())
    assert argv[0] == "python"
    assert not re.search(r"\b(curl|wget)\b", check)
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert f"http://127.0.0.1:{DEFAULT_PORT}/healthz" in env


def test_healthcheck_command_works_against_a_live_endpoint(runtime: list[Instruction]) -> None:
    # Run the image's healthcheck program with this Python against a tiny /healthz server.
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        argv = json.loads(only(runtime, "HEALTHCHECK").args.partition("CMD")[2].strip())
        port = server.server_address[1]
        for path, expected in (("/healthz", 0), ("/nope", 1)):
            env = {"BUDDY_EXPORTER_HEALTHCHECK_URL": f"http://127.0.0.1:{port}{path}"}
            result = subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True)
            assert (result.returncode == 0) == (expected == 0), (path, result.stderr)
    finally:
        server.shutdown()
        server.server_close()


def test_no_writes_needed_at_run_time(runtime: list[Instruction]) -> None:
    env = " ".join(i.args for i in runtime if i.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert not [i for i in runtime if i.keyword == "VOLUME"]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker's .dockerignore rules leave ``path`` out of the build context."""

    def to_regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out)

    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.strip("/")
        regex = to_regex(body)
        # Like Docker, a pattern matching a parent directory matches what is inside it.
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    copied = [
        src
        for i in parse(DOCKERFILE.read_text(encoding="utf-8"))
        if i.keyword == "COPY" and "--from" not in i.args
        for src in i.args.split()[:-1]
    ]
    assert copied, "the build stage copies its sources"
    for src in copied:
        assert (REPO / src).exists(), f"COPY source {src} is missing from the repository"
        assert not dockerignore_excludes(src.rstrip("/"), patterns), src
    for module in (REPO / "exporter").glob("*.py"):
        assert not dockerignore_excludes(str(module.relative_to(REPO)), patterns), module
    for dropped in (
        ".git/HEAD",
        ".venv/bin/python",
        ".tools/helm/helm",
        "tests/conftest.py",
        "helm/buddy-exporter/Chart.yaml",
        "exporter/__pycache__/cli.cpython-311.pyc",
    ):
        assert dockerignore_excludes(dropped, patterns), dropped


def test_build_context_builds_a_wheel_with_the_console_script(tmp_path: Path) -> None:
    # What `docker build` would send (the repository minus .dockerignore) must be
    # enough for the build stage's `pip wheel .`.
    import os
    import zipfile

    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    context = tmp_path / "context"
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in {".git", ".venv", ".tools", "node_modules"}]
        for name in files:
            rel = (Path(root) / name).relative_to(REPO).as_posix()
            if not dockerignore_excludes(rel, patterns):
                (context / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, context / rel)
    assert (context / "pyproject.toml").exists() and (context / "exporter" / "cli.py").exists()
    assert not list(context.rglob("*.pyc"))
    wheels = tmp_path / "wheels"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels),
         str(context)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = wheels.glob("buddy_exporter-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "buddy-exporter = exporter.cli:main" in zf.read(entry_points).decode()
    assert "exporter/py.typed" in names
    assert not [n for n in names if n.startswith("tests/")]
