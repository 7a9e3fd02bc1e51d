"""Chat templates are code shipped with a model (Jinja, run in transformers' sandbox): a render is bounded in
time and in output size, and an error names the model and the template's file.

The time bound is a ``SIGALRM`` timer (``setitimer``) around the render, so it holds in the main thread of a
process: the scoring worker's (its own subprocess, or a Kubernetes pod) and the in-process launcher's Dagster
step. Jinja runs as Python bytecode, so the timer's exception ends even a template that loops without output.
In another thread only the size bound holds.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from valuebias.errors import InputError

#: The longest one render may take (a conversation of two messages renders in well under 10 ms).
RENDER_SECONDS = 10.0
#: The most characters one rendered conversation may have (the paper's prompts render to a few hundred).
RENDER_MAX_CHARS = 100_000


class _RenderTimeout(BaseException):
    """Raised by the timer inside a render (a BaseException: no ``except Exception`` in between swallows it)."""


def template_file(tokenizer, source: str | None) -> str:
    """The file the tokenizer's chat template came from, as a person finds it: ``chat_template.jinja`` when the
    model folder has one, else the ``tokenizer_config.json`` key (or the GGUF file's metadata)."""
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or source or ""))
    for name in ("chat_template.jinja", "chat_template.json"):
        if (folder / name).is_file():
            return str(folder / name)
    if (folder / "tokenizer_config.json").is_file():
        return f"{folder / 'tokenizer_config.json'} (key chat_template)"
    if folder.suffix == ".gguf" or (folder.is_dir() and any(folder.glob("*.gguf"))):
        return f"{folder} (the GGUF file's tokenizer.chat_template)"
    return f"the chat template of {folder}"


@contextmanager
def _time_limit(seconds: float):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise _RenderTimeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def bounded_render(render: Callable[[], str], tokenizer, *, source: str | None) -> str:
    """``render()`` (an ``apply_chat_template`` call), at most :data:`RENDER_SECONDS` long and
    :data:`RENDER_MAX_CHARS` characters out; otherwise an ``InputError`` naming the model (``source``) and the
    template's file."""
    model = source or getattr(tokenizer, "name_or_path", None) or "the model"
    try:
        with _time_limit(RENDER_SECONDS):
            text = render()
    except _RenderTimeout:
        raise InputError(f"the chat template of model {model} took more than {RENDER_SECONDS:g} s to render one "
                         "conversation (a loop that never ends?): fix the template, or register another model",
                         source=template_file(tokenizer, source), field="chat_template") from None
    if len(text) > RENDER_MAX_CHARS:
        raise InputError(f"the chat template of model {model} rendered {len(text):,} characters for one "
                         f"conversation (at most {RENDER_MAX_CHARS:,}): fix the template, or register another model",
                         source=template_file(tokenizer, source), field="chat_template")
    return text
