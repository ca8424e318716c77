"""The ``cnnlab`` command: a thin layer over the Python API.

This is the one place that turns errors into a one-paragraph message; set
``CNNLAB_DEBUG=1`` to see the traceback. Heavy imports (TensorFlow) happen
inside each command, so ``cnnlab --help`` is instant.
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import click

from cnnlab import __version__
from cnnlab.cli.compare import compare
from cnnlab.cli.data import data
from cnnlab.cli.evaluate import evaluate
from cnnlab.cli.export import export
from cnnlab.cli.finetune import finetune, lr_find
from cnnlab.cli.launch import launch
from cnnlab.cli.models import models
from cnnlab.cli.predict import predict
from cnnlab.cli.report import report
from cnnlab.cli.serve import serve
from cnnlab.cli.sweep import sweep
from cnnlab.cli.train import train


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cnnlab")
def cli() -> None:
    """cnnlab: labelled images in, a trained and evaluated CNN classifier out.

    \b
    Start here:
      cnnlab train                                  # digits, embedded, ~15 s
      cnnlab train --data folder:photos --model resnet20 --epochs 30
      cnnlab evaluate runs/<run>                    # its held-out test split
      cnnlab predict runs/<run> photos/new/         # top-3 labels per image
      cnnlab finetune --data folder:photos --model mobilenet --weights imagenet
      cnnlab data inspect folder:photos             # duplicates, leakage, bad files
      cnnlab report runs/<run>                      # HTML report, written by train too
      cnnlab export runs/<run>                      # TFLite, ONNX, SavedModel, parity-checked
      cnnlab serve runs/<run>                       # HTTP API and page (no TensorFlow)
      cnnlab models list                            # every architecture
      cnnlab launch --workers 2 -- train ...        # a multi-worker cluster, locally
    """


for command in (
    train,
    evaluate,
    predict,
    models,
    data,
    report,
    compare,
    finetune,
    lr_find,
    sweep,
    export,
    serve,
    launch,
):
    cli.add_command(command)


def _debug() -> bool:
    return os.environ.get("CNNLAB_DEBUG", "") not in ("", "0", "false")


def _quiet_tensorflow_import() -> None:
    """Import TensorFlow with C++ stderr silenced: it prints start-up notices that
    TF_CPP_MIN_LOG_LEVEL does not reach. Python errors still surface normally."""
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    except Exception:  # noqa: BLE001 - re-raised, visibly, at the real import
        pass
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_deprecations(warnings.showwarning)
        return _main(argv)


def _one_line_deprecations(show):
    """A ``showwarning`` that prints cnnlab's deprecation warnings as one line."""
    from cnnlab.config import CnnlabDeprecationWarning

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CnnlabDeprecationWarning):
            click.echo(f"cnnlab: warning: {message}", err=True)
        else:
            show(message, category, filename, lineno, file, line)

    return show_warning


def _main(argv: list[str] | None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # hide TensorFlow's start-up chatter
    args = sys.argv[1:] if argv is None else argv
    # (sweep is not heavy: its worker never imports TensorFlow, each trial's process does)
    heavy = (
        "train",
        "evaluate",
        "predict",
        "models",
        "data",
        "report",
        "finetune",
        "lr-find",
        "export",
    )
    if args and args[0] in heavy and not ({"-h", "--help"} & set(args) or _debug()):
        _quiet_tensorflow_import()
    from cnnlab.errors import CnnlabError

    try:
        result = cli.main(args=argv, prog_name="cnnlab", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except CnnlabError as e:
        if _debug():
            traceback.print_exc()
        click.echo(f"cnnlab: error: {e}", err=True)
        return 2
    except Exception as e:  # noqa: BLE001 - the user gets a sentence, not a traceback
        if _debug():
            traceback.print_exc()
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        click.echo(
            f"cnnlab: unexpected error ({type(e).__name__}): {first}. This is likely a bug in "
            "cnnlab; set CNNLAB_DEBUG=1 to see the traceback and include it in a report.",
            err=True,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
