"""A simulated Buddy.works API on loopback, for ``--demo``, the tests and the benchmark.

It serves the documented JSON shapes (workspaces, projects, pipelines, actions)
with a bearer-token check, pagination and rate-limit headers. Tests change its
state, inject faults (status codes, delays, bodies, dropped connections) and
read its request log.

Faults cover the failure modes of the reliability tests: any status with any
body and headers (``Retry-After``, rate-limit headers), a delay, a dropped
connection, a body cut short, a huge body (``body_size``) and a body that never
ends (``endless``). A refused connection is simply a port nobody listens on.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from exporter.models import KNOWN_STATUSES


@dataclass
class Fault:
    """A canned misbehaviour for requests whose path matches ``path`` (a regex)."""

    path: str = ""
    status: int = 500
    body: bytes | str | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False
    truncate: bool = False
    times: int | None = None
    probability: float = 1.0
    passthrough: bool = False  # apply delay/headers, then answer normally
    body_size: int = 0  # stream a JSON body of this many bytes instead of ``body``
    endless: bool = False  # send headers, then one body byte per ``trickle_seconds``, forever
    trickle_seconds: float = 0.05

    def matches(self, path: str) -> bool:
        return re.search(self.path, path) is not None


@dataclass
class Request:
    """One request as the simulator saw it."""

    time: float
    path: str
    query: dict[str, str]
    status: int
    authorized: bool


@dataclass
class SimPipeline:
    id: int
    name: str
    fields: dict[str, Any]
    actions: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class SimProject:
    name: str
    display_name: str
    status: str = "ACTIVE"
    pipelines: dict[int, SimPipeline] = field(default_factory=dict)


@dataclass
class SimWorkspace:
    domain: str
    name: str
    id: int
    token: str
    projects: dict[str, SimProject] = field(default_factory=dict)


ACTION_TYPES = ("BUILD", "DOWNLOAD_PACKAGE_VERSION", "SSH_COMMAND", "SLACK", "DOCKERFILE", "SFTP")
SUMMARY_FIELDS = (
    "url", "html_url", "id", "name", "type", "trigger_time",
    "last_execution_status", "disabled", "ignore_errors", "run_next",
)  # fmt: skip
_ROUTE = re.compile(
    r"^/workspaces(?:/(?P<ws>[^/]+)(?:/(?P<projects>projects)(?:/(?P<project>[^/]+)"
    r"(?:/(?P<pipelines>pipelines)(?:/(?P<pipeline>[^/]+)"
    r"(?:/(?P<actions>actions)(?:/(?P<action>[^/]+))?)?)?)?)?)?)?/?$"
)


class Simulator:
    """The simulated API. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str = "sim-token",  # noqa: S107
        base_path: str = "",
        ssl_context: ssl.SSLContext | None = None,
        list_actions: str = "summary",
        rate_limit: int = 10_000,
        rate_limit_window: float = 60.0,
        public_url: str = "https://api.buddy.works",
        app_url: str = "https://app.buddy.works",
    ) -> None:
        self.default_token = token
        self.base_path = base_path.rstrip("/")
        self.list_actions = list_actions  # "summary" (like the docs' sample) or "full"
        self.paginate_actions = False  # the docs mention no pagination for the action list
        self.broken_pagination = False  # every page of every list is page 1, forever
        self.rate_limit = rate_limit
        self.rate_limit_window = rate_limit_window
        self.rate_limit_headers = True
        self.public_url = public_url
        self.app_url = app_url
        self.workspaces: dict[str, SimWorkspace] = {}
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.lock = threading.RLock()
        self._window_start = time.time()
        self._used = 0
        self._ssl_context = ssl_context
        self._server = _Server((host, port), _make_handler(self))
        if ssl_context is not None:
            self._server.socket = ssl_context.wrap_socket(self._server.socket, server_side=True)
        self._thread: threading.Thread | None = None
        self._churn_stop = threading.Event()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()

    # -- lifecycle -----------------------------------------------------------------
    @property
    def url(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        host, port = self._server.server_address[:2]
        return f"{scheme}://{host!s}:{port}{self.base_path}"

    def start(self) -> Simulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="simulator",
            kwargs={"poll_interval": 0.1},
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._churn_stop.set()
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        # Kept-alive connections too: a stopped Buddy answers nothing, like a dead host.
        with self.lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state ---------------------------------------------------------------------
    def add_workspace(
        self, domain: str, name: str | None = None, token: str | None = None
    ) -> SimWorkspace:
        with self.lock:
            ws = SimWorkspace(
                domain, name or domain, len(self.workspaces) + 1, token or self.default_token
            )
            self.workspaces[domain] = ws
            return ws

    def add_project(self, workspace: str, name: str, status: str = "ACTIVE") -> SimProject:
        with self.lock:
            ws = self.workspaces.get(workspace) or self.add_workspace(workspace)
            project = SimProject(name, name.replace("-", " ").title(), status)
            ws.projects[name] = project
            return project

    def add_pipeline(
        self, workspace: str, project: str, pipeline_id: int, name: str, **fields: Any
    ) -> SimPipeline:
        with self.lock:
            ws = self.workspaces.get(workspace) or self.add_workspace(workspace)
            proj = ws.projects.get(project) or self.add_project(workspace, project)
            base = {
                "on": "EVENT",
                "refs": ["refs/heads/main"],
                "last_execution_status": "SUCCESSFUL",
                "last_execution_revision": None,
                "disabled": False,
                "paused": False,
            }
            pipeline = SimPipeline(pipeline_id, name, {**base, **fields})
            proj.pipelines[pipeline_id] = pipeline
            return pipeline

    def add_action(
        self,
        workspace: str,
        project: str,
        pipeline_id: int,
        action_id: int,
        name: str,
        type: str = "BUILD",
        pipeline_name: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Add an action (and its workspace, project and pipeline when new)."""
        with self.lock:
            pipeline = self._pipeline(workspace, project, pipeline_id)
            if pipeline is None:
                pipeline = self.add_pipeline(
                    workspace, project, pipeline_id, pipeline_name or f"Pipeline {pipeline_id}"
                )
            action: dict[str, Any] = {
                "type": type, "id": action_id, "name": name,
                "current_revision": None, "trigger_time": "ON_EVERY_EXECUTION",
                "trigger_conditions": [], "run_next": "WAIT_ON_SUCCESS",
                "run_only_on_first_failure": False, "variables": [], "disabled": False,
                "timeout": 600, "ignore_errors": False, "retry_count": 0, "retry_interval": 0,
                "last_execution_status": "INITIAL", "permissions": None, "loop": None,
            }  # fmt: skip
            if type == "DOWNLOAD_PACKAGE_VERSION":
                action.update(package="release-bundle", version="1.0.0", source_path="/",
                              destination_path="dist/", recursive=True, overwrite=True,
                              download_excludes=[], download_includes=[])  # fmt: skip
            action.update(fields)
            pipeline.actions[action_id] = action
            return action

    def update_action(
        self, workspace: str, project: str, pipeline_id: int, action_id: int, **fields: Any
    ) -> None:
        with self.lock:
            pipeline = self._pipeline(workspace, project, pipeline_id)
            assert pipeline is not None, "no such pipeline"
            pipeline.actions[action_id].update(fields)

    def update_pipeline(
        self, workspace: str, project: str, pipeline_id: int, **fields: Any
    ) -> None:
        with self.lock:
            pipeline = self._pipeline(workspace, project, pipeline_id)
            assert pipeline is not None, "no such pipeline"
            if "name" in fields:
                pipeline.name = fields.pop("name")
            pipeline.fields.update(fields)

    def remove_pipeline(self, workspace: str, project: str, pipeline_id: int) -> None:
        with self.lock:
            del self.workspaces[workspace].projects[project].pipelines[pipeline_id]

    def remove_action(self, workspace: str, project: str, pipeline_id: int, action_id: int) -> None:
        with self.lock:
            pipeline = self._pipeline(workspace, project, pipeline_id)
            assert pipeline is not None, "no such pipeline"
            del pipeline.actions[action_id]

    def set_token(self, workspace: str, token: str) -> None:
        """Change the token a workspace accepts (the old one is then revoked)."""
        with self.lock:
            self.workspaces[workspace].token = token

    def add_fault(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
            return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def request_count(self, path_pattern: str = "") -> int:
        with self.lock:
            return sum(1 for r in self.requests if re.search(path_pattern, r.path))

    def iter_actions(self) -> Iterator[tuple[str, str, int, dict[str, Any]]]:
        with self.lock:
            for ws in self.workspaces.values():
                for project in ws.projects.values():
                    for pipeline in project.pipelines.values():
                        for action in pipeline.actions.values():
                            yield ws.domain, project.name, pipeline.id, action

    def _pipeline(self, workspace: str, project: str, pipeline_id: int) -> SimPipeline | None:
        ws = self.workspaces.get(workspace)
        proj = ws.projects.get(project) if ws else None
        return proj.pipelines.get(pipeline_id) if proj else None

    # -- seeds -----------------------------------------------------------------------
    def seed_demo(self) -> None:
        """A small company: two workspaces, a few projects, pipelines and actions."""
        rng = random.Random(7)
        layout = {
            "acme-dev": {
                "storefront": {41: "Build & deploy staging", 42: "Release to production"},
                "billing-api": {51: "Test & package"},
            },
            "acme-labs": {"data-pipeline": {61: "Nightly ETL"}},
        }
        next_id = 300
        for ws, projects in layout.items():
            self.add_workspace(ws, ws.replace("-", " ").title())
            for project, pipelines in projects.items():
                self.add_project(ws, project)
                for pid, pname in pipelines.items():
                    self.add_pipeline(ws, project, pid, pname)
                    for i, (aname, atype) in enumerate(
                        (
                            ("Run unit tests", "BUILD"),
                            ("Fetch release bundle", "DOWNLOAD_PACKAGE_VERSION"),
                            ("Deploy over SSH", "SSH_COMMAND"),
                            ("Notify team", "SLACK"),
                        )
                    ):
                        next_id += 1
                        self.add_action(
                            ws, project, pid, next_id, aname, atype,
                            last_execution_status=rng.choice(("SUCCESSFUL", "FAILED", "INPROGRESS")),
                            retry_count=i % 3, retry_interval=30 * (i % 2), timeout=300 * (i + 1),
                            trigger_time="ON_FAILURE" if atype == "SLACK" else "ON_EVERY_EXECUTION",
                            disabled=(next_id % 7 == 0),
                        )  # fmt: skip
        self.add_project("acme-dev", "legacy-site", status="CLOSED")

    def seed_generated(
        self, workspace: str, projects: int, pipelines: int, actions: int, seed: int = 1
    ) -> None:
        """``projects`` x ``pipelines`` x ``actions`` objects, for scale tests and benchmarks."""
        rng = random.Random(seed)
        self.add_workspace(workspace)
        pid = aid = 0
        for p in range(projects):
            project = f"project-{p:04d}"
            self.add_project(workspace, project)
            for _ in range(pipelines):
                pid += 1
                self.add_pipeline(workspace, project, pid, f"Pipeline {pid}")
                for a in range(actions):
                    aid += 1
                    self.add_action(
                        workspace, project, pid, aid, f"Action {aid}", ACTION_TYPES[a % len(ACTION_TYPES)],
                        last_execution_status=rng.choice(KNOWN_STATUSES),
                        retry_count=a % 4, timeout=60 * (a + 1),
                    )  # fmt: skip

    def churn(self, rng: random.Random, fraction: float = 0.2) -> None:
        """Move some actions to a new status, as executions would."""
        with self.lock:
            for _ws, _project, _pid, action in list(self.iter_actions()):
                if rng.random() < fraction:
                    action["last_execution_status"] = rng.choice(
                        (
                            "SUCCESSFUL",
                            "SUCCESSFUL",
                            "FAILED",
                            "INPROGRESS",
                            "ENQUEUED",
                            "TERMINATED",
                        )
                    )
            for ws in self.workspaces.values():
                for project in ws.projects.values():
                    for pipeline in project.pipelines.values():
                        statuses = {a["last_execution_status"] for a in pipeline.actions.values()}
                        pipeline.fields["last_execution_status"] = next(
                            (s for s in ("FAILED", "INPROGRESS", "ENQUEUED") if s in statuses),
                            "SUCCESSFUL",
                        )

    def start_churn(self, every_seconds: float, seed: int = 0) -> None:
        rng = random.Random(seed)

        def loop() -> None:
            while not self._churn_stop.wait(every_seconds):
                self.churn(rng)

        threading.Thread(target=loop, name="simulator-churn", daemon=True).start()

    # -- serving -------------------------------------------------------------------
    def _rate_headers(self) -> dict[str, str]:
        now = time.time()
        if now - self._window_start >= self.rate_limit_window:
            self._window_start, self._used = now, 0
        self._used += 1
        remaining = max(self.rate_limit - self._used, 0)
        if not self.rate_limit_headers:
            return {}
        return {
            "X-Rate-Limit-Limit": str(self.rate_limit),
            "X-Rate-Limit-Remaining": str(remaining),
            # Rounded up: at the time the header names, the window has really reset.
            "X-Rate-Limit-Reset": str(math.ceil(self._window_start + self.rate_limit_window)),
        }

    def handle(
        self, path: str, query: dict[str, str], auth: str
    ) -> tuple[int, dict[str, str], bytes, Fault | None]:
        """Answer one GET: status, headers, body, and the fault applied (if any)."""
        with self.lock:
            fault = self._take_fault(path)
            headers = self._rate_headers()
            if self._used > self.rate_limit:
                return 429, headers, _error("Too many requests"), fault
            if fault and not fault.passthrough:
                headers.update(fault.headers)
                return fault.status, headers, _fault_body(fault), fault
            if fault:
                headers.update(fault.headers)
            status, body = self._route(path, query, auth)
            return status, headers, body, fault

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(path) and (fault.times is None or fault.times > 0):
                if fault.probability < 1.0 and random.random() >= fault.probability:
                    continue
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    def _route(self, path: str, query: dict[str, str], auth: str) -> tuple[int, bytes]:
        if self.base_path:
            if not path.startswith(self.base_path + "/"):
                return 404, _error("Not found")
            path = path[len(self.base_path) :]
        found = _ROUTE.match(path)
        if not found:
            return 404, _error("Not found")
        match = {k: unquote(v) if v else v for k, v in found.groupdict().items()}
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else None
        if match["ws"] is None:
            allowed = [w for w in self.workspaces.values() if w.token == token]
            if not allowed:
                return 401, _error("Invalid or expired access token")
            return 200, _json(
                {
                    "url": self._api("/workspaces"),
                    "html_url": f"{self.app_url}/workspaces",
                    "workspaces": [self._workspace_json(w) for w in allowed],
                }
            )
        ws = self.workspaces.get(match["ws"])
        if ws is None or ws.token != token:
            if ws is None and any(w.token == token for w in self.workspaces.values()):
                return 404, _error("Workspace not found")
            return 401, _error("Invalid or expired access token")
        base = f"/workspaces/{ws.domain}/projects"
        if match["projects"] is None:
            return 200, _json(self._workspace_json(ws))
        if match["project"] is None:
            items = [p for p in ws.projects.values() if query.get("status") in (None, p.status)]
            return 200, _json(
                {
                    "url": self._api(base),
                    "projects": [
                        self._project_json(ws, p)
                        for p in _page(items, query, self.broken_pagination)
                    ],
                }
            )
        project = ws.projects.get(match["project"])
        if project is None:
            return 404, _error("Project not found")
        if match["pipelines"] is None:
            return 200, _json(self._project_json(ws, project))
        if match["pipeline"] is None:
            page = _page(list(project.pipelines.values()), query, self.broken_pagination)
            return 200, _json(
                {
                    "url": self._api(f"{base}/{project.name}/pipelines"),
                    "pipelines": [self._pipeline_json(ws, project, p) for p in page],
                }
            )
        pipeline = project.pipelines.get(_int(match["pipeline"]))
        if pipeline is None:
            return 404, _error("Pipeline not found")
        if match["actions"] is None:
            return 200, _json(self._pipeline_json(ws, project, pipeline))
        if match["action"] is None:
            actions = [
                self._action_json(ws, project, pipeline, a) for a in pipeline.actions.values()
            ]
            if self.list_actions == "summary":
                actions = [{k: a[k] for k in SUMMARY_FIELDS if k in a} for a in actions]
            if self.paginate_actions:
                actions = _page(actions, query, self.broken_pagination)
            return 200, _json(
                {
                    "url": self._api(f"{base}/{project.name}/pipelines/{pipeline.id}/actions"),
                    "actions": actions,
                }
            )
        action = pipeline.actions.get(_int(match["action"]))
        if action is None:
            return 404, _error("Action not found")
        return 200, _json(self._action_json(ws, project, pipeline, action))

    def _api(self, path: str) -> str:
        return f"{self.public_url}{path}"

    def _workspace_json(self, ws: SimWorkspace) -> dict[str, Any]:
        return {
            "url": self._api(f"/workspaces/{ws.domain}"),
            "html_url": f"{self.app_url}/{ws.domain}",
            "id": ws.id,
            "name": ws.name,
            "domain": ws.domain,
        }

    def _project_json(self, ws: SimWorkspace, p: SimProject) -> dict[str, Any]:
        return {
            "url": self._api(f"/workspaces/{ws.domain}/projects/{p.name}"),
            "html_url": f"{self.app_url}/{ws.domain}/{p.name}",
            "name": p.name,
            "display_name": p.display_name,
            "status": p.status,
        }

    def _pipeline_short(self, ws: SimWorkspace, p: SimProject, pl: SimPipeline) -> dict[str, Any]:
        return {
            "url": self._api(f"/workspaces/{ws.domain}/projects/{p.name}/pipelines/{pl.id}"),
            "html_url": f"{self.app_url}/{ws.domain}/{p.name}/pipelines/pipeline/{pl.id}",
            "id": pl.id,
            "name": pl.name,
            "on": pl.fields.get("on"),
            "refs": pl.fields.get("refs"),
            "last_execution_status": pl.fields.get("last_execution_status"),
            "last_execution_revision": pl.fields.get("last_execution_revision"),
        }

    def _pipeline_json(self, ws: SimWorkspace, p: SimProject, pl: SimPipeline) -> dict[str, Any]:
        return {**self._pipeline_short(ws, p, pl), **pl.fields, "id": pl.id, "name": pl.name}

    def _action_json(
        self, ws: SimWorkspace, p: SimProject, pl: SimPipeline, a: dict[str, Any]
    ) -> dict[str, Any]:
        path = f"/workspaces/{ws.domain}/projects/{p.name}/pipelines/{pl.id}/actions/{a['id']}"
        return {
            "url": self._api(path),
            "html_url": f"{self.app_url}/{ws.domain}/{p.name}/pipelines/pipeline/{pl.id}/action/{a['id']}/edit",
            **a,
            "pipeline": self._pipeline_short(ws, p, pl),
        }


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        return -1


def _page(items: list[Any], query: dict[str, str], broken: bool = False) -> list[Any]:
    page = 1 if broken else max(_int(query.get("page", "1")), 1)
    per_page = min(max(_int(query.get("per_page", "20")), 1), 100)
    return items[(page - 1) * per_page : page * per_page]


def _json(data: Any) -> bytes:
    return json.dumps(data).encode()


def _error(message: str) -> bytes:
    return _json({"errors": [{"message": message}]})


def _fault_body(fault: Fault) -> bytes:
    if fault.body is None:
        return _error(f"Simulated HTTP {fault.status}")
    return fault.body.encode() if isinstance(fault.body, str) else fault.body


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def _make_handler(sim: Simulator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Without this every small response waits for the client's delayed ACK (40 ms),
        # which a latency benchmark would charge to the exporter.
        disable_nagle_algorithm = True

        def handle(self) -> None:
            with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                super().handle()  # a client that goes away is part of what tests do

        def setup(self) -> None:
            super().setup()
            with sim.lock:
                sim._connections.add(self.connection)

        def finish(self) -> None:
            with sim.lock:
                sim._connections.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            auth = self.headers.get("Authorization", "")
            status, headers, body, fault = sim.handle(parts.path, query, auth)
            with sim.lock:
                sim.requests.append(
                    Request(time.time(), parts.path, query, status, "Bearer " in auth)
                )
            if fault and fault.delay:
                time.sleep(fault.delay)
            if fault and fault.drop:
                self.close_connection = True
                return
            try:
                self._answer(status, headers, body, fault)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up; that is what some tests do

        def _answer(
            self, status: int, headers: dict[str, str], body: bytes, fault: Fault | None
        ) -> None:
            content_type = (
                fault.content_type if fault and not fault.passthrough else "application/json"
            )
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header(
                "X-Buddy-Media-Type", self.headers.get("X-Buddy-Media-Type", "buddy.v1.1.0")
            )
            for name, value in headers.items():
                self.send_header(name, value)
            if fault and fault.endless:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.close_connection = True
                self.wfile.write(
                    b"%x\r\n%s\r\n" % (len(b'{"id": 1, "name": "'), b'{"id": 1, "name": "')
                )
                self.wfile.flush()
                while not sim._stopping.wait(fault.trickle_seconds):
                    self.wfile.write(b"1\r\nx\r\n")
                    self.wfile.flush()
                return
            if fault and fault.body_size:
                self.send_header("Content-Length", str(fault.body_size))
                self.end_headers()
                self.close_connection = True
                head, tail = b'{"id": 1, "pad": "', b'"}'
                self.wfile.write(head)
                left = fault.body_size - len(head) - len(tail)
                while left > 0:
                    n = min(left, 64 * 1024)
                    self.wfile.write(b"x" * n)
                    left -= n
                self.wfile.write(tail)
                return
            if fault and fault.truncate:
                self.send_header("Content-Length", str(len(body) + 1000))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
                return
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main(argv: list[str] | None = None) -> None:
    """Run the simulator on its own: ``python -m exporter.simulator --help``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m exporter.simulator",
        description="A simulated Buddy.works API on 127.0.0.1, for trying the exporter without "
        "an account: a generated workspace of projects x pipelines x actions (or the demo "
        "company). It prints its base URL; use that as buddy.api_url and --token as the token.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)"
    )
    parser.add_argument("--token", default="sim-token", help="the bearer token it accepts")
    parser.add_argument(
        "--demo", action="store_true", help="the demo company instead of a generated one"
    )
    parser.add_argument("--workspace", default="acme")
    parser.add_argument("--projects", type=int, default=10)
    parser.add_argument("--pipelines", type=int, default=5, help="per project")
    parser.add_argument("--actions", type=int, default=10, help="per pipeline")
    parser.add_argument("--list-actions", choices=["summary", "full"], default="summary")
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every response"
    )
    args = parser.parse_args(argv)
    sim = Simulator(port=args.port, token=args.token, list_actions=args.list_actions)
    if args.demo:
        sim.seed_demo()
    else:
        sim.seed_generated(args.workspace, args.projects, args.pipelines, args.actions)
    if args.latency:
        sim.add_fault(Fault(delay=args.latency, passthrough=True))
    sim.start()
    print(sim.url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
