"""The backend's error types, each named for what went wrong, and the parts of their messages.

Raised here and caught at an entry point (the server, `clipseg-label`):
- `ModelLoadError`: the checkpoint cannot be found or loaded, or the device cannot be used;
- `LabelConfigError`: a label config that cannot be parsed, or one with nothing to predict;
- `SourceError`: a `clipseg-label` input that names nothing readable;
- `WebhookDataError`: a webhook body without what `fit` needs;
- `LabelStudioError`: Label Studio refused a request or could not be reached (a token exchange,
  a 401, an export, a push: `backend.batch.push.PushError` is one). It is not an `ImageError`:
  whoever turns one bad task into a failure record (`backend.model`, `backend.batch.predict`,
  `backend.batch.ray_engine`, `backend.batch.exemplar_build`) catches both.
Two live beside the code that raises them: `backend.images.ImageError` (a task's image cannot
be had; `DisallowedSourceError`, one the backend must not read) and
`backend.settings.SettingsError` (an environment variable the backend cannot use).

Messages that name a setting carry it as data (`Setting`: a `Settings` field and a value), so
that each entry point words it in its own terms (`spell`): the server names environment
variables (`environment_words`: `CLIPSEG_MODEL=demo`), `clipseg-label` its options
(`backend.cli`: `--model demo`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    """A setting a message names: a `Settings` field ("model", "device") and a value of it,
    given or suggested (None: the setting itself)."""

    field: str
    value: str | None = None


@dataclass(frozen=True)
class ServerNote:
    """Advice that only helps when the server runs (docker mounts, `clipseg-backend`): a
    command leaves it out."""

    text: str


Part = str | Setting | ServerNote
#: How an entry point turns a message (its parts) into text.
Words = Callable[[Sequence[Part]], str]

#: The environment variable of each setting a message names.
ENVIRONMENT = {
    "model": "CLIPSEG_MODEL",
    "device": "CLIPSEG_DEVICE",
    "dtype": "CLIPSEG_DTYPE",
    "tile_size": "CLIPSEG_TILE_SIZE",
    "tile_overlap": "CLIPSEG_TILE_OVERLAP",
}


def spell(parts: Sequence[Part], name: Callable[[Setting], str], server: bool) -> str:
    """The text of a message: each `Setting` as `name` words it, each `ServerNote` kept only
    for a server (`server`)."""
    out = []
    for part in parts:
        if isinstance(part, Setting):
            out.append(name(part))
        elif isinstance(part, ServerNote):
            out.append(part.text if server else "")
        else:
            out.append(part)
    return "".join(out)


def _environment_name(setting: Setting) -> str:
    variable = ENVIRONMENT[setting.field]
    return variable if setting.value is None else f"{variable}={setting.value}"


def environment_words(parts: Sequence[Part]) -> str:
    """A message in the server's terms: `CLIPSEG_MODEL=demo`, with the server's advice."""
    return spell(parts, _environment_name, server=True)


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be found or loaded, or the device cannot be used.

    `setting` and `value` are the setting at fault (a `Settings` field) and its value; `parts`
    the message, which the entry point words (`worded`). `str()` words it for the server, which
    reads its settings from the environment.
    """

    def __init__(self, setting: str, value: str, *parts: Part) -> None:
        self.setting = setting
        self.value = value
        self.parts = tuple(parts)
        super().__init__(environment_words(self.parts))

    def worded(self, words: Words) -> str:
        return words(self.parts)


class LabelConfigError(ValueError):
    """The label config cannot be parsed, or has no control the backend can predict."""


class SourceError(ValueError):
    """A `clipseg-label` input cannot be turned into images (a missing file, a malformed
    export): a usage error."""


class EngineError(RuntimeError):
    """The batch engine asked for cannot run (`clipseg-label predict --engine ray` without ray
    installed, a Ray cluster that cannot be reached): a usage error; the message says the fix."""


class WebhookDataError(ValueError):
    """A webhook body without what `fit` needs (a project id, an annotation id)."""


class LabelStudioError(RuntimeError):
    """Label Studio refused a request or could not be reached; the message names the request
    and the fix."""
