"""Command line: flags, config loading, logging, signals; exit 2 on a bad config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from exporter import __version__
from exporter.app import Exporter
from exporter.config import (
    CONFIG_ENV,
    DEFAULT_LISTEN_ADDRESS,
    TOKEN_ENV,
    ConfigError,
    Connection,
    LogConfig,
    Settings,
    ShardingConfig,
    WebConfig,
    build_settings,
    format_validation_error,
    load_settings,
    resolve_connections,
)
from exporter.logs import redact, setup_logging
from exporter.simulator import Simulator

log = logging.getLogger("exporter")

DEMO_INTERVAL_SECONDS = 5.0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="buddy-exporter",
        description="Prometheus exporter for Buddy.works pipeline actions.",
        epilog=f"The Buddy token is read from BUDDY_TOKEN, buddy.token_file or buddy.token. "
        f"The config file may also be named by {CONFIG_ENV}.",
    )
    parser.add_argument(
        "--config.file", dest="config_file", metavar="PATH", default=os.environ.get(CONFIG_ENV),
        help=f"YAML configuration file (default: ${CONFIG_ENV})",
    )  # fmt: skip
    parser.add_argument(
        "--web.listen-address", dest="listen_address", metavar="HOST:PORT",
        help=f"address to serve on (default: web.listen_address, else {DEFAULT_LISTEN_ADDRESS})",
    )  # fmt: skip
    parser.add_argument(
        "--log.level", dest="log_level", choices=["debug", "info", "warning", "error"],
        help="log level (default: log.level, else info)",
    )  # fmt: skip
    parser.add_argument(
        "--shard", type=int, metavar="N",
        help="the shard this replica polls, 0-based (default: sharding.shard, else 0)",
    )  # fmt: skip
    parser.add_argument(
        "--total-shards", dest="total_shards", type=int, metavar="M",
        help="how many replicas share the pipelines (default: sharding.total_shards, else 1)",
    )  # fmt: skip
    parser.add_argument(
        "--demo", action="store_true",
        help="run against a built-in simulated Buddy API (no account or token needed)",
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"buddy-exporter {__version__}")
    return parser.parse_args(argv)


def _apply_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    update: dict[str, object] = {}
    flag = ""
    try:
        if args.listen_address:
            flag = "--web.listen-address"
            update["web"] = WebConfig(listen_address=args.listen_address)
        if args.log_level:
            flag = "--log.level"
            update["log"] = LogConfig(level=args.log_level)
        if args.shard is not None or args.total_shards is not None:
            flag = "--shard/--total-shards"
            update["sharding"] = ShardingConfig(
                shard=settings.sharding.shard if args.shard is None else args.shard,
                total_shards=(
                    settings.sharding.total_shards
                    if args.total_shards is None
                    else args.total_shards
                ),
            )
    except ValidationError as exc:
        raise ConfigError(
            [f"{flag}: {line.split(': ', 1)[1]}" for line in format_validation_error(exc)]
        ) from None
    return settings.model_copy(update=update) if update else settings


def load(
    args: argparse.Namespace,
) -> tuple[Settings, dict[str, Connection], Simulator | None]:
    """Settings, each workspace's connection and (with --demo) the started simulator.

    Raises ConfigError.
    """
    if args.demo:
        token = secrets.token_urlsafe(24)
        sim = Simulator(token=token)
        sim.seed_demo()
        data = {
            "buddy": {"api_url": sim.url},
            "poll": {
                "interval_seconds": DEMO_INTERVAL_SECONDS,
                "stale_after_seconds": 60,
                "discovery_interval_seconds": 30,
            },
            "targets": [{"workspace": ws} for ws in sim.workspaces],
        }
        settings = _apply_flags(build_settings(data), args)
        connections = resolve_connections(settings, {TOKEN_ENV: token})
        sim.start()
        sim.start_churn(DEMO_INTERVAL_SECONDS * 2)
        return settings, connections, sim
    if not args.config_file:
        raise ConfigError(
            [f"--config.file: required (or set {CONFIG_ENV}); try --demo for a quick look"]
        )
    settings = _apply_flags(load_settings(Path(args.config_file)), args)
    return settings, resolve_connections(settings), None


def _reloader(args: argparse.Namespace) -> Callable[[], tuple[Settings, dict[str, Connection]]]:
    def reload() -> tuple[Settings, dict[str, Connection]]:
        settings, connections, _ = load(args)
        return settings, connections

    return reload


def watched_files(args: argparse.Namespace, settings: Settings) -> list[Path]:
    """The config file and token files: a change to any of them triggers a reload."""
    files = [Path(args.config_file)] if args.config_file else []
    files += [p for p in [settings.buddy.token_file] if p is not None]
    files += [w.token_file for w in settings.workspaces if w.token_file is not None]
    return files


async def _serve(
    settings: Settings, connections: dict[str, Connection], args: argparse.Namespace
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    exporter = Exporter(
        settings,
        connections,
        reloader=None if args.demo else _reloader(args),
        watch=() if args.demo else watched_files(args, settings),
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, exporter.request_reload)
    await exporter.run(stop)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings, connections, sim = load(args)
    except ConfigError as exc:
        for line in exc.lines:
            print(line, file=sys.stderr)
        return 2
    for connection in connections.values():
        redact(connection.token.get_secret_value())
    setup_logging(settings.log.level.value)
    if sim is not None:
        log.info("demo mode: simulated Buddy API at %s", sim.url)
    try:
        asyncio.run(_serve(settings, connections, args))
    except OSError as exc:
        # The address may come from the flag, the environment or the file.
        address = settings.web.listen_address
        print(
            f"web.listen_address (--web.listen-address): cannot listen on {address}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        if sim is not None:
            sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
