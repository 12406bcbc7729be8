"""`omnilive serve [...]`, `omnilive users ...` (cli_users.py), `omnilive eval TASK [...]` and `omnilive --version`.

Flags override OMNILIVE_* environment variables, which override the defaults: the CLI only
passes the flags that were given, and `Settings` reads the environment for the rest.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from pydantic import ValidationError

from omnilive.cli_users import add_users_parser, run_users
from omnilive.eval.command import add_eval_parser, run as run_eval
from omnilive.server.app import package_version
from omnilive.server.settings import Settings

# flag → Settings field, for flags whose value passes straight through
_SERVE_FLAGS = ("model", "llm", "host", "port", "dtype", "api_key", "data_dir", "cache_dir", "log_level",
                "threads", "ray", "ray_address", "replicas", "gpus_per_replica", "min_replicas", "max_replicas",
                "target_ongoing_requests", "stages")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omnilive", description="OpenAI-compatible server for omni models.")
    parser.add_argument("--version", action="version", version=f"omnilive {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the HTTP server")
    # defaults are None so that an absent flag leaves the environment / Settings default in charge
    serve.add_argument("--model", help='"default" (embedded cascade of packaged models), a directory or a hub id')
    serve.add_argument("--llm", choices=["qwen2.5-coder-0.5b", "smollm2-135m"], help="LLM of the default model")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    serve.add_argument("--api-key", help="one admin key for /v1 routes (users' keys: omnilive users)")
    serve.add_argument("--data-dir", help="uploaded files, model cache and database live here")
    serve.add_argument("--cache-dir", help="assembled model files (default: DATA_DIR/models)")
    serve.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--cors-origin", action="append", dest="cors_origins", metavar="ORIGIN",
                       help="allow browser requests from ORIGIN (repeatable; '*' for any)")
    serve.add_argument("--threads", type=int, help="CPU threads for the models (default 2)")
    serve.add_argument("--ray", action="store_true", default=None,
                       help="serve through Ray Serve (a local Ray cluster unless --ray-address is given)")
    serve.add_argument("--ray-address", help='with --ray: join this Ray cluster ("auto" or HOST:PORT)')
    serve.add_argument("--replicas", type=int, help="with --ray: copies of the backend (default 1)")
    serve.add_argument("--gpus-per-replica", type=float, help="with --ray: GPUs per replica (default 0: CPUs only)")
    serve.add_argument("--min-replicas", type=int, help="with --ray: autoscaling's fewest replicas")
    serve.add_argument("--max-replicas", type=int, help="with --ray: autoscaling's most replicas (turns it on)")
    serve.add_argument("--target-ongoing-requests", type=float,
                       help="with --ray and autoscaling: requests per replica to scale towards (default 2)")
    serve.add_argument("--stages", help='with --ray: thinker and speech as separate deployments, e.g. "thinker=2,speech=1"')
    add_eval_parser(commands)
    add_users_parser(commands)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    given = {name: getattr(args, name) for name in (*_SERVE_FLAGS, "cors_origins") if getattr(args, name) is not None}
    return Settings(**given)


def serve(settings: Settings) -> int:
    from omnilive.server.app import create_app
    from omnilive.server.drain import run_server

    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.ray:
        from omnilive.server.scale_out import CannotScaleOut, serve_on_ray

        try:
            serve_on_ray(settings)
        except CannotScaleOut as e:
            print(f"omnilive: {e}", file=sys.stderr)
            return 2
        return 0
    app = create_app(settings)
    run_server(app, settings.host, settings.port, settings.log_level, settings.drain_seconds)  # SIGTERM drains
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "eval":
        return run_eval(args)
    if args.command == "users":
        return run_users(args)
    try:
        settings = settings_from_args(args)
    except ValidationError as e:
        print(f"omnilive: invalid settings:\n{e}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings)
    return 0
