"""What every command shares: the settings (read once), the console, the spec flags, and the SDK.

A command asks its `CliContext` for what it talks to, and that choice is made here only:
- `client()`: the SDK (`producer.sdk.Sdk`): over the HTTP API when its URL and key are set, with
  no Redis or storage; else on Redis. The job commands talk to it alone.
- `redis()` and `redis_settings()`: for a command that needs Redis (or runs a process that does); with the
  API variables set, Redis is not meant to be used, so they refuse.
"""

from __future__ import annotations

from typing import Any

import click
import redis
from pydantic import ValidationError
from rich.console import Console

from kandinsky_batch.redis_client import describe, ping_once
from kandinsky_batch.schema import Mode
from kandinsky_batch.settings import Settings, describe_settings_error
from producer.client import Client
from producer.http_client import HttpClient
from producer.sdk import NotOverHttp, Sdk

console = Console(stderr=True, soft_wrap=True)  # messages carry paths and URLs: never wrapped or cut
API_VARIABLES = "KANDINSKY_BATCH_API_URL and KANDINSKY_BATCH_API_KEY"

# CLI flag -> spec field, for one job or as defaults for every line of a file.
SPEC_OPTIONS: list[tuple[str, str, type]] = [
    ("--mode", "mode", click.Choice([m.value for m in Mode])),  # type: ignore[list-item]
    ("--negative-prompt", "negative_prompt", str),
    ("--height", "height", int),
    ("--width", "width", int),
    ("--steps", "num_inference_steps", int),
    ("--prior-steps", "prior_num_inference_steps", int),
    ("--guidance-scale", "guidance_scale", float),
    ("--prior-guidance-scale", "prior_guidance_scale", float),
    ("--num-images", "num_images", int),
    ("--seed", "seed", int),
    ("--image", "image", str),
    ("--mask", "mask", str),
    ("--strength", "strength", float),
]


def spec_options(func: Any) -> Any:
    """The spec flags (SPEC_OPTIONS) as options of a command; unset ones come in as None."""
    for flag, field, kind in reversed(SPEC_OPTIONS):
        func = click.option(flag, field, type=kind, default=None, help=f"spec field {field}")(func)
    return func


class SettingsRefused(click.ClickException):
    """Bad `KANDINSKY_BATCH_*` variables: one line each, exit 2 like any other usage error."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        for line in self.message.splitlines():
            click.echo(f"Error: {line}", err=True)


class CliContext:
    """The CLI's shared state, `ctx.obj` of every command (`pass_cli`); the settings are read on
    first use, once, unless given (tests give them)."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = Settings()
            except ValidationError as exc:
                raise SettingsRefused(describe_settings_error(exc)) from None
        return self._settings

    def redis_url(self) -> str:
        """The Redis URL for an error message, if the settings were read."""
        return self._settings.redis_url if self._settings is not None else "(invalid settings)"

    def client(self) -> Sdk:
        """The SDK the job commands talk to: the HTTP API when a URL and key are set, else Redis."""
        credentials = self._api_credentials()
        return HttpClient(*credentials) if credentials else self.redis()

    def redis(self) -> Client:
        """The SDK on Redis, once one quick ping has found Redis there.

        A stopped Redis or a wrong URL is one line within seconds, rather than after the ~40 s of
        retries the SDK keeps for the rest of the run (a long submit rides out a Redis restart).
        """
        settings = self.redis_settings()
        check_redis(settings)
        return Client(settings)

    def redis_settings(self) -> Settings:
        """The settings of a command that needs Redis: refused while the API variables are set."""
        if self._api_credentials() is not None:
            name = _command_name()
            raise click.ClickException(
                f"`{name}` needs Redis and does not run over the HTTP API; "
                f"unset {API_VARIABLES} to run it against Redis"
            )
        return self.settings

    def _api_credentials(self) -> tuple[str, str] | None:
        """(URL, key) when both API variables are set, None when neither; one alone is refused."""
        url = self.settings.api_url or ""
        key = self.settings.api_key.get_secret_value() if self.settings.api_key else ""
        if bool(url) != bool(key):
            raise click.ClickException(
                f"set both {API_VARIABLES} to use the HTTP API, or neither to use Redis"
            )
        return (url, key) if url else None


pass_cli = click.make_pass_decorator(CliContext, ensure=True)


def check_redis(settings: Settings) -> None:
    """One line naming the URL (password masked) when Redis does not answer a single quick ping."""
    try:
        ping_once(settings.redis_url)
    except redis.RedisError as exc:
        raise click.ClickException(describe(exc, settings.redis_url)) from None


def refused(exc: NotOverHttp) -> click.UsageError:
    """What the HTTP API cannot do, as a usage error naming the flag the SDK's parameter came from."""
    ctx = click.get_current_context()
    flags = {param.name: param.opts[0] for param in ctx.command.params if param.opts}
    return click.UsageError(exc.naming(flags.get(exc.parameter, exc.parameter)))


def _command_name() -> str:
    """The command as typed: `worker` for `worker check` too."""
    ctx = click.get_current_context()
    return ctx.find_root().invoked_subcommand or ctx.info_name or "this command"
