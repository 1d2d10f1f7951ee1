"""A model's tokenizer as the engine uses it, without importing transformers after the first load.

transformers builds the tokenizer once (its class may rebuild the pipeline of tokenizer.json: v5's
Llama and Qwen2 tokenizers do) and this module keeps what it built beside the model: the Rust
backend, the chat template, the special tokens and the decoding options. Later loads read that file
with `tokenizers` and render the template with jinja2 in the sandbox transformers uses, so a
one-question `core chat` does not wait ~0.3–1.3 s for transformers' imports. The ids, text and
pieces are transformers' own (tests/unit/test_chat_tokenizer.py holds them equal).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from datetime import datetime
from functools import cached_property
from importlib.metadata import version
from pathlib import Path
from typing import Any

KEPT_NAME = ".localllm-tokenizer.json"
THINKING_ENDS = "</think>"  # what ends a thinking model's reasoning (Qwen3, the DeepSeek-R1 distills)
KEPT_FORMAT = 1
# transformers' clean-up of decoded text (its clean_up_tokenization), for tokenizers that ask for it.
_CLEAN_UPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
              (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))  # fmt: skip


class ChatTokenizer:
    """Text to ids and back, and a conversation to the ids of its prompt under the chat template."""

    def __init__(
        self, backend: Any, chat_template: str, special_tokens: dict[str, str], eos_token_id: int | None,
        pad_token_id: int | None, model_max_length: int, clean_up: bool,
    ) -> None:  # fmt: skip
        self.backend = backend  # a tokenizers.Tokenizer
        self.chat_template = chat_template
        self.special_tokens = dict(special_tokens)  # bos_token, eos_token, ...: the template reads them
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.model_max_length = model_max_length
        self.clean_up = clean_up

    @classmethod
    def from_transformers(cls, tokenizer: Any) -> ChatTokenizer:
        """What transformers' fast tokenizer built, as this class."""
        clean_up = bool(tokenizer.clean_up_tokenization_spaces) and not (
            type(tokenizer.backend_tokenizer.model).__name__ == "BPE"  # transformers skips it for BPE
            and not getattr(
                tokenizer, "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False
            )
        )
        return cls(
            tokenizer.backend_tokenizer, tokenizer.chat_template, tokenizer.special_tokens_map,
            tokenizer.eos_token_id, tokenizer.pad_token_id, int(tokenizer.model_max_length), clean_up,
        )  # fmt: skip

    @property
    def vocabulary_size(self) -> int:
        """How many token ids the tokenizer knows (its added ones too)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, *, special: bool = False) -> list[int]:
        """The ids of `text`; `special`: with the tokens the tokenizer adds around a text (a BOS)."""
        return self.backend.encode(text, add_special_tokens=special).ids

    @property
    def thinks(self) -> bool:
        """Whether the model writes its reasoning between <think> and </think> (its template knows them)."""
        return THINKING_ENDS in self.chat_template

    @cached_property
    def opens_thinking(self) -> bool:
        """Whether the template opens the reply's reasoning itself (DeepSeek-R1's distills end the prompt
        with <think>): the reply then only closes it."""
        try:
            return self.chat_text([{"role": "user", "content": "hi"}]).rstrip().endswith("<think>")
        except Exception:  # a template that wants another conversation (jinja2 raises many kinds)
            return False

    @property
    def switches_thinking(self) -> bool:
        """Whether the chat template takes `enable_thinking` (Qwen3's: reason first, or answer at once)."""
        return "enable_thinking" in self.chat_template

    def chat_ids(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True, thinking: bool = True
    ) -> list[int]:
        """The prompt's ids: `messages` rendered by the chat template (`chat_text`), its special tokens
        read as written."""
        return self.encode(
            self.chat_text(messages, add_generation_prompt=add_generation_prompt, thinking=thinking)
        )

    def chat_text(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        thinking: bool = True,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> str:
        """`messages` rendered by the chat template (jinja2's TemplateError when the template refuses
        them). `thinking` False renders it with enable_thinking=False; True leaves the template its own
        default. `tools`: the functions the reply may call (OpenAI's `tools`), for the template to list."""
        if not messages:
            raise ValueError("There is no message to reply to.")
        options = {} if thinking else {"enable_thinking": False}
        return self._template.render(
            messages=[dict(m) for m in messages], tools=list(tools) if tools else None, documents=None,
            add_generation_prompt=add_generation_prompt, **self.special_tokens, **options,
        )  # fmt: skip

    @cached_property
    def turn_end_ids(self) -> frozenset[int]:
        """The tokens that end a reply under this template: the tokenizer's end of text, and the special
        token the template writes after an assistant's message (ChatML's <|im_end|>, Llama 3's
        <|eot_id|>, Gemma's <end_of_turn>), which a model's generation_config may leave out (a fine-tune
        of a base model lists the base's <|endoftext|>: the reply went on to write the user's next turn)."""
        ends = {self.eos_token_id} if self.eos_token_id is not None else set()
        marker = "\u2063reply\u2063"
        turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}]
        try:
            text = self.chat_text(turns, add_generation_prompt=False)
        except Exception:  # a template that wants another conversation (jinja2 raises many kinds)
            return frozenset(ends)
        after = text.partition(marker)[2]
        special = {added.content: token for token, added in self.backend.get_added_tokens_decoder().items()
                   if added.special}  # fmt: skip
        first = next((name for name in special if after.lstrip().startswith(name)), None)
        return frozenset(ends | ({special[first]} if first else set()))

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        if self.clean_up:
            for written, cleaned in _CLEAN_UPS:
                text = text.replace(written, cleaned)
        return text

    def piece(self, token: int) -> str:
        """One token's text as it reads inside a text (a leading space kept)."""
        name = self.backend.id_to_token(token)
        decoder = self.backend.decoder
        return decoder.decode([name]) if decoder is not None else name

    @cached_property
    def _template(self) -> Any:
        return compile_template(self.chat_template)

    def save(self, path: Path, source: str) -> None:
        """Keep this tokenizer at `path` (written whole, then renamed), for files named by `source`."""
        kept = {
            "format": KEPT_FORMAT, "source": source, "transformers": version("transformers"),
            "backend": self.backend.to_str(), "chat_template": self.chat_template,
            "special_tokens": self.special_tokens, "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id, "model_max_length": self.model_max_length,
            "clean_up": self.clean_up,
        }  # fmt: skip
        partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
        try:
            partial.write_text(json.dumps(kept, ensure_ascii=False), encoding="utf-8")
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)  # a full disk leaves no half-written file behind

    @classmethod
    def load(cls, path: Path, source: str) -> ChatTokenizer | None:
        """The tokenizer kept at `path`, or None when it is missing, damaged, for other files or from
        another transformers."""
        from tokenizers import Tokenizer

        try:
            kept = json.loads(path.read_text(encoding="utf-8"))
            if (kept["format"], kept["source"], kept["transformers"]) != (
                KEPT_FORMAT,
                source,
                version("transformers"),
            ):
                return None
            return cls(
                Tokenizer.from_str(kept["backend"]), kept["chat_template"], kept["special_tokens"],
                kept["eos_token_id"], kept["pad_token_id"], int(kept["model_max_length"]),
                bool(kept["clean_up"]),
            )  # fmt: skip
        except Exception:  # unreadable, not this format; tokenizers raises a plain Exception
            return None


def compile_template(chat_template: str) -> Any:
    """`chat_template` compiled as transformers compiles it: jinja2's immutable sandbox (templates come
    from the Hub), trimmed blocks, loop controls, `{% generation %}` blocks, its tojson, dict, namespace
    (no underscore names), raise_exception and strftime_now."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        """`{% generation %}...{% endgeneration %}` marks an assistant's turn for training: its body as is."""

        tags = frozenset({"generation"})

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    class Namespace(jinja2.utils.Namespace):
        def __init__(*args: Any, **kwargs: Any) -> None:  # jinja's own signature trick: `self` may be a key
            self, attributes = args[0], dict(*args[1:], **kwargs)
            for name in attributes:
                _check_name(name)
            jinja2.utils.Namespace.__init__(self, attributes)

        def __setitem__(self, name: str, value: Any) -> None:
            _check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"A chat template cannot set {name!r} on a namespace.")

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
               sort_keys: bool = False) -> str:  # fmt: skip
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols]
    )
    environment.filters["tojson"] = tojson
    environment.globals.update(
        raise_exception=raise_exception, namespace=Namespace, dict=_TemplateDict(),
        strftime_now=lambda pattern: datetime.now().strftime(pattern),
    )  # fmt: skip
    return environment.from_string(chat_template)


class _TemplateDict:
    """`dict(...)` and `dict.fromkeys(...)` in a template, without the type's other attributes."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args)
