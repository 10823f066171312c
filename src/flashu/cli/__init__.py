"""The ``flashu`` command line.

User errors (bad paths, specs, values, images…) print one ``error: …`` line on stderr and exit with status 2; only
bugs show a traceback. Warnings print as ``warning: …`` lines. Heavy libraries (torch, transformers, diffusers) are
imported inside the commands, so ``flashu --help`` starts at once. Output paths are checked before any work.
"""

from __future__ import annotations

import sys
import warnings

import click

from ..errors import FlashuError, Terminated, out_of_memory_message
from . import measure, models, use  # noqa: F401  (each registers its commands on ``main``)
from .common import (  # noqa: F401  (re-exported: the entry point, tests and scripts use them from here)
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USER_ERROR,
    _err,
    _quiet_libraries,
    _show_warning,
    _specs,
    main,
)


# ---------------------------------------------------------------------------------------------------- entry
def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def _interrupted(exc: BaseException) -> int:
    """One line and the exit status for Ctrl-C (130) or SIGTERM (143); records and models are already safe (the
    interrupt ran every cleanup on its way up)."""
    if isinstance(exc, Terminated) or isinstance(exc.__cause__, Terminated):
        _err("terminated (SIGTERM): work written so far is kept; rerun the same command to resume where it can")
        return EXIT_TERMINATED
    _err("interrupted")
    return EXIT_INTERRUPTED


def run(argv: list[str] | None = None) -> int:
    """Entry point: click in non-standalone mode so every user error becomes one line and exit status 2; SIGTERM is
    handled like Ctrl-C (exit 143), an allocation failure is one line."""
    import signal
    import threading

    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        previous_sigterm = signal.signal(signal.SIGTERM, _raise_terminated)
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), "flashu")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("once")
            _quiet_libraries()
            main.main(args=argv, prog_name="flashu", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click turns a KeyboardInterrupt (and so SIGTERM) into Abort
        if isinstance(exc.__cause__, KeyboardInterrupt):
            return _interrupted(exc.__cause__)
        _err("aborted")
        return EXIT_INTERRUPTED
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        ctx = exc.ctx
        hint = f" (see 'flashu {ctx.command_path.split(' ', 1)[1]} --help')" if ctx and " " in ctx.command_path \
            else " (see 'flashu --help')"
        _err(f"error: {exc.format_message()}{hint}")
        return EXIT_USER_ERROR
    except click.ClickException as exc:
        _err(f"error: {exc.format_message()}")
        return EXIT_USER_ERROR
    except FlashuError as exc:
        _err(f"error: {exc}")
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except (MemoryError, RuntimeError) as exc:  # an allocation failure outside the guarded pipelines
        message = out_of_memory_message(exc, f"'flashu {command}'")
        if message is None:
            raise
        _err(f"error: {message}")
        return EXIT_USER_ERROR
    finally:
        warnings.showwarning = previous
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return 0


def entry() -> None:
    sys.exit(run())


if __name__ == "__main__":
    entry()
