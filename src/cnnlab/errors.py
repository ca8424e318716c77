"""The errors a cnnlab user sees.

Every message is one paragraph that says what was received, what was expected
and how to fix it, in the manner of Keras' own ``ValueError``s. The CLI prints
``str(error)`` and nothing else (``CNNLAB_DEBUG=1`` adds the traceback).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnlabError(ValueError):
    """A user-facing error: what went wrong, what was expected, how to fix it.

    Args:
        message: what went wrong, naming the file or field.
        expected: what would have been accepted.
        fix: what the user can do about it.
    """

    def __init__(self, message: str, *, expected: str | None = None, fix: str | None = None):
        self.message = message
        self.expected = expected
        self.fix = fix
        parts = [_sentence(message)]
        if expected:
            parts.append(_sentence(f"Expected {expected}"))
        if fix:
            parts.append(_sentence(fix))
        super().__init__(" ".join(parts))


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "?", "!")) else text + "."


class ConfigError(CnnlabError):
    """A bad configuration key or value."""


class DataError(CnnlabError):
    """A data source that cannot be read as asked."""


class BadImagesError(DataError):
    """Files that cannot be decoded were found before training."""

    def __init__(self, bad: list, source: str):
        self.bad = bad
        listed = "; ".join(f"{b.path} ({b.problem})" for b in bad[:20])
        more = f"; and {len(bad) - 20} more" if len(bad) > 20 else ""
        super().__init__(
            f"{len(bad)} file(s) in {source} cannot be decoded as images: {listed}{more}",
            expected="JPEG, PNG, GIF, BMP or WebP files that open completely",
            fix="Remove or repair them, or pass --skip-bad-images (skip_bad_images: true) "
            "to train without them; the skipped files are listed in the run folder",
        )


class ModelError(CnnlabError):
    """An unknown model or a bad model option."""


class WeightsError(CnnlabError):
    """Pretrained weights that are missing or cannot be fetched."""


class RunError(CnnlabError):
    """A run folder that is missing, incomplete or would be overwritten."""


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' Did you mean: a, b?' for the names closest to ``name``, or ''."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(matches)}?" if matches else ""
