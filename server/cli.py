"""The `codeface` command: serve, prepare-model, migrate."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from server.settings import Settings, SettingsError, load_settings, parse_override

logger = logging.getLogger("codeface")

DEFAULT_CONFIG = Path("configs/cpu.yaml")


def resolve_model(settings: Settings) -> str:
    """The model folder to serve: MODEL_PATH when set, else the default model, prepared on first use."""
    if settings.model_path:
        return settings.model_path
    from engine.model_prep import prepare_default_model

    return str(prepare_default_model(settings.model_cache_dir))


def override(item: str) -> tuple[str, str]:
    """argparse's `type` for --set: a malformed item is a usage error that says how to write it."""
    try:
        return parse_override(item)
    except SettingsError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def settings_from(args: argparse.Namespace) -> Settings:
    config = args.config if args.config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    return load_settings(config, host=getattr(args, "host", None), port=getattr(args, "port", None),
                         **dict(args.set))


def cmd_serve(args: argparse.Namespace) -> int:
    from server.telemetry.logs import configure_logging

    settings = settings_from(args)
    # First, so that every later line (imports included) is JSON.
    configure_logging(settings.log_level, log_format=settings.log_format, log_file=settings.log_file,
                      max_bytes=settings.log_max_bytes, backup_count=settings.log_backup_count)

    from server.app import create_app
    from server.serve import serve
    from server.telemetry.tracing import setup_tracing
    from storage import upgrade_database

    model_path = resolve_model(settings)
    if settings.migrate_on_start:
        upgrade_database(settings.database_url)
    if settings.api_processes > 1:
        from server.api_processes import serve_api_processes

        return serve_api_processes(settings, model_path)
    provider = setup_tracing(settings.trace_exporter, endpoint=settings.trace_endpoint,
                             sample_ratio=settings.trace_sample_ratio)
    app = create_app(settings, model_path)
    exit_code = serve(app)
    if provider is not None:
        provider.shutdown()
    return exit_code


def cmd_prepare_model(args: argparse.Namespace) -> int:
    print(resolve_model(settings_from(args)))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from storage import upgrade_database

    settings = settings_from(args)
    upgrade_database(settings.database_url, args.revision)
    print(f"database at revision {args.revision}")
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from server import admin

    return admin.run(args, settings_from(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codeface", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: object, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--config", type=Path, help=f"YAML profile (default: {DEFAULT_CONFIG})")
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", type=override,
                         help="override any setting, e.g. --set max_model_len=4096 (repeatable)")
        sub.set_defaults(handler=handler)
        return sub

    serve = add("serve", cmd_serve, "start the HTTP server")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    add("prepare-model", cmd_prepare_model, "convert the default model once and print its folder")
    migrate = add("migrate", cmd_migrate, "apply database migrations")
    migrate.add_argument("--revision", default="head")
    from server.admin import add_commands

    add_commands(add("admin", cmd_admin, "create users and API keys"))
    return parser


def main(argv: list[str] | None = None) -> int:
    # Until `serve` configures JSON logs from the settings; the other commands keep this plain format.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
