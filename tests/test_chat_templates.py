"""A chat template is bounded in time and output size per render; the error names the model and the template's
file (issue 28). A real transformers tokenizer, built here, renders through its own apply_chat_template."""

from __future__ import annotations

import time

import pytest

from valuebias import chat_templates
from valuebias.errors import InputError
from valuebias.lm_scoring import render_lm_prompt
from valuebias.rm_scoring import render_conversation

PLAIN = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
# nested loops with no output: 10^10 iterations (transformers' sandbox allows ranges up to 100,000)
ENDLESS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}" + PLAIN
# 100,000 copies of the message: about 4 MB for one conversation
HUGE = "{% for i in range(100000) %}{{ messages[0].content }}{% endfor %}"


def tokenizer_in(folder, template: str):
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"[UNK]": 0, "love": 1}, unk_token="[UNK]"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = template
    tokenizer.save_pretrained(folder)  # writes chat_template.jinja, as models ship it
    return PreTrainedTokenizerFast.from_pretrained(folder)


def test_a_plain_template_renders_as_transformers_does(tmp_path):
    tokenizer = tokenizer_in(tmp_path, PLAIN)
    assert render_conversation(tokenizer, "Best thing?", "love", source="my-rm") == (
        "<user>Best thing?</user><assistant>love</assistant>")


def test_a_template_that_loops_is_stopped_after_the_time_bound_naming_model_and_file(tmp_path, monkeypatch):
    monkeypatch.setattr(chat_templates, "RENDER_SECONDS", 0.5)
    tokenizer = tokenizer_in(tmp_path, ENDLESS)
    assert (tmp_path / "chat_template.jinja").read_text() == ENDLESS
    start = time.monotonic()
    with pytest.raises(InputError) as error:
        render_conversation(tokenizer, "Best thing?", "love", source="my-rm")
    assert time.monotonic() - start < 5.0  # 10^10 iterations would take hours
    assert str(error.value) == (
        f"{tmp_path}/chat_template.jinja: field 'chat_template': the chat template of model my-rm took more than "
        "0.5 s to render one conversation (a loop that never ends?): fix the template, or register another model")
    with pytest.raises(InputError, match="the chat template of model my-lm took more than 0.5 s"):
        render_lm_prompt(tokenizer, "Best thing?", "instruction_tuned", source="my-lm")


def test_a_template_that_renders_too_much_is_refused_naming_model_and_file(tmp_path):
    tokenizer = tokenizer_in(tmp_path, HUGE)
    text = "What, in one word, is the best thing ever?"
    with pytest.raises(InputError) as error:
        render_conversation(tokenizer, text, "love", source="my-rm")
    assert str(error.value) == (
        f"{tmp_path}/chat_template.jinja: field 'chat_template': the chat template of model my-rm rendered "
        f"{100000 * len(text):,} characters for one conversation (at most 100,000): fix the template, or register "
        "another model")
