"""Entry point: the ``exaslide`` command group, logging set-up and error handling.

Every error exaslide raises on purpose (and file-system errors) is printed as one line,
``exaslide: error: <file>: <problem>``, with exit code 2. Anything else is a bug: one line
``exaslide: internal error: ...`` and exit code 1. ``--debug`` also prints the traceback
(same exit codes). Library warnings (tifffile, Pillow) are shown only with ``--debug``.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings

import click

from exaslide import __version__
from exaslide.errors import ExaslideError
from exaslide.extras import missing_extra

EXPECTED_ERRORS = (ExaslideError, OSError)


class ExaslideGroup(click.Group):
    """A click group that turns expected errors into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EXPECTED_ERRORS as exc:
            code = getattr(exc, "exit_code", 2)  # 1: a run that failed part-way (rerun)
            if ctx.meta.get("exaslide.debug"):
                traceback.print_exc()
                ctx.exit(code)
            click.echo(f"exaslide: error: {one_line(exc)}", err=True)
            ctx.exit(code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:
            if ctx.meta.get("exaslide.debug"):
                raise
            missing = missing_extra(exc) if isinstance(exc, ImportError) else None
            if missing is not None:  # an optional part that is not installed: bad input
                click.echo(f"exaslide: error: {ctx.invoked_subcommand or 'exaslide'}: "
                           f"{missing}", err=True)
                ctx.exit(2)
            from exaslide.storage.errors import scrub

            click.echo(f"exaslide: internal error: {type(exc).__name__}: {scrub(exc)} (run "
                       "with --debug for the traceback and please report it)", err=True)
            ctx.exit(1)


@click.group(cls=ExaslideGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="exaslide")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-v", "--verbose", is_flag=True, help="Show informational logs.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="YAML file of option defaults, one section per command (e.g. "
                   "'extract: {patch_size: 224, mpp: 0.5}'); command-line options win.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, verbose: bool, config_file: str | None) -> None:
    """exaslide: whole-slide images to tumour masks, patches and models."""
    ctx.meta["exaslide.debug"] = debug
    if config_file:
        ctx.default_map = load_config(config_file, ctx.command)
        apply_cache_config(ctx.default_map.get("cache", {}))
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from exaslide.storage.errors import ScrubFilter

    for handler in logging.getLogger().handlers:  # no secret in any log line
        if not any(isinstance(f, ScrubFilter) for f in handler.filters):
            handler.addFilter(ScrubFilter())
    if not debug:  # their complaints about damaged files become exaslide's own errors
        logging.getLogger("tifffile").setLevel(logging.CRITICAL)
        # gcsfs without Google credentials (an emulator, a public bucket) first tries
        # the metadata server and logs its absence: not a problem of the command
        logging.getLogger("google.auth").setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", module="PIL")


def one_line(exc: BaseException) -> str:
    """An expected error as one line: an OS error as ``file: problem`` (a full disk says
    so), anything else its message with line breaks folded."""
    import errno

    from exaslide.storage.errors import scrub

    if isinstance(exc, OSError) and not isinstance(exc, ExaslideError):
        where = exc.filename or "the output folder"
        if exc.errno == errno.ENOSPC:
            return scrub(f"{where}: no space left on device; free some space and rerun")
        if exc.filename:
            return scrub(f"{exc.filename}: {exc.strerror or exc}")
    return scrub(" ".join(str(exc).split()))


def apply_cache_config(section: dict) -> None:
    """A config file's ``cache: {dir, size}`` applies to every command (and to the Dask
    workers they start): it sets ``EXASLIDE_CACHE_DIR`` / ``EXASLIDE_CACHE_SIZE`` for this
    process, over values inherited from the environment."""
    import os

    for key, variable in (("dir", "EXASLIDE_CACHE_DIR"), ("size", "EXASLIDE_CACHE_SIZE")):
        if section.get(key) is not None:
            os.environ[variable] = str(section[key])


def load_config(path: str, group: click.Group) -> dict:
    """Read a YAML config: a mapping of command names to option defaults (keys are the
    option names with ``_`` or ``-``); a group's section holds one section per subcommand
    (``embed: {patches: {batch_size: 64}}``). Unknown commands or options are usage
    errors."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = " ".join(str(exc).split())[:200]
        raise click.BadParameter(f"{path}: not valid YAML: {first}",
                                 param_hint="--config") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path}: expected a mapping of command names",
                                 param_hint="--config")
    return _config_section(path, group, data, "")


def _config_section(path: str, group: click.Group, data: dict, where: str) -> dict:
    resolved: dict = {}
    for name, options in data.items():
        command = group.commands.get(name)
        if command is None or not isinstance(options, dict):
            visible = sorted(n for n, c in group.commands.items() if not c.hidden)
            raise click.BadParameter(f"{path}: {where}{name!r} is not a command with "
                                     f"options (commands: {', '.join(visible)})",
                                     param_hint="--config")
        known = {p.name for p in command.params}
        resolved[name] = {}
        for key, value in options.items():
            param = str(key).replace("-", "_")
            if isinstance(command, click.Group) and param in command.commands and \
                    isinstance(value, dict):
                resolved[name].update(_config_section(path, command, {param: value},
                                                      f"{where}{name} "))
            elif param in known:
                resolved[name][param] = value
            else:
                raise click.BadParameter(f"{path}: {where}{name} has no option {key!r}",
                                         param_hint="--config")
    return resolved


class DefaultGroup(ExaslideGroup):
    """A noun group (``embed patches|slides|figures``) that also takes the arguments of
    its ``default`` subcommand directly (``exaslide embed MODEL DIR`` = ``exaslide embed
    patches MODEL DIR``), the form of the previous release."""

    def __init__(self, *args, default: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.default = default

    def resolve_command(self, ctx: click.Context, args: list[str]):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            note(f"`exaslide {self.name} ARGS` is now `exaslide {self.name} {self.default} "
                 "ARGS`")
            return self.default, self.commands[self.default], args
        return super().resolve_command(ctx, args)


def note(message: str) -> None:
    """A deprecation note on stderr: the old form works for one more release."""
    click.echo(f"exaslide: note: {message}; the old form goes in the next release",
               err=True)


def alias(command: click.Command, old: str, new: str) -> click.Command:
    """A hidden command ``old`` that runs ``command`` (now ``exaslide NEW``) after a
    note."""

    def callback(**kwargs):
        note(f"`exaslide {old}` is now `exaslide {new}`")
        return command.callback(**kwargs)

    return click.Command(old, params=list(command.params), callback=callback, hidden=True,
                         help=f"Old name of `exaslide {new}`.")


def _register() -> None:
    from exaslide.cli import (
        balance,
        cache,
        demo,
        embed,
        encoders,
        env,
        evaluate,
        extract,
        features,
        figures,
        infer,
        info,
        mask,
        mil,
        search,
        stage,
        synth,
        train,
        view,
    )
    from exaslide.cli import export as export_cli
    from exaslide.cli import index as index_cli

    embed_group = DefaultGroup("embed", default="patches",
                               help="Embeddings: `patches` of an extraction with a model, "
                                    "`slides` from a patch store, captioned `figures`.")
    embed_group.add_command(embed.command, "patches")
    embed_group.add_command(embed.slides_command, "slides")
    embed_group.add_command(figures.embed_command, "figures")
    evaluate.command.add_command(search.evaluate_command, "retrieval")
    for command in (info.command, mask.command, extract.command, balance.command,
                    synth.command, demo.command, cache.command, train.command,
                    evaluate.command, infer.command, embed_group, index_cli.command,
                    search.command, figures.command, encoders.command, stage.command,
                    features.command, mil.command, view.command, export_cli.command,
                    env.command,
                    alias(embed.slides_command, "embed-slides", "embed slides"),
                    alias(search.evaluate_command, "evaluate-retrieval",
                          "evaluate retrieval")):
        cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point. Usage errors (a missing or invalid option) are one
    line too, ``exaslide: error: COMMAND: problem (see exaslide COMMAND --help)``, exit
    code 2."""
    try:
        code = cli.main(prog_name="exaslide", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("exaslide: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        where = exc.ctx.command_path if getattr(exc, "ctx", None) else "exaslide"
        message = " ".join(exc.format_message().split())
        command = where.removeprefix("exaslide").strip()
        click.echo(f"exaslide: error: {command + ': ' if command else ''}{message} (see "
                   f"{where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
