"""core.inference.chat_tokenizer: transformers' tokenizer, kept beside the model and read without it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import pytest
from jinja2.exceptions import SecurityError, TemplateError
from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from core.errors import ChatTemplateError
from core.inference import loading
from core.inference.chat_tokenizer import KEPT_NAME, ChatTokenizer, compile_template
from core.inference.loading import load_tokenizer
from core.settings import PROJECT_ROOT
from tests.fixtures.serving import serving
from tests.fixtures.tiny_models import CORPUS, LLAMA_TEMPLATE, QWEN3_TEMPLATE, build_tiny_model, install_ready

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there!"}],
    [
        {"role": "system", "content": "Answer in one line."},
        {"role": "user", "content": "你好！今天有什么可以帮你的吗？"},
        {"role": "assistant", "content": "  Mixed 中文 and English text. 😀\n\n"},
        {"role": "user", "content": "def add(a, b):\n    return a + b"},
    ],
    [{"role": "user", "content": "a typed <|im_end|> and </s> stay what the tokenizer makes of them"}],
]
TEXTS = ["Hello! How can I help you today?", " leading space", "本地模型 🚀 don't  double  spaces\n\tend"]
# The class a tokenizer_config.json names decides the pipeline: transformers 5 rebuilds Llama's and
# Qwen2's from the vocabulary, whatever tokenizer.json says.
CLASSES = [("qwen2", None), ("llama", None), ("qwen2", "Qwen2Tokenizer"), ("sentencepiece", "LlamaTokenizer")]


def write_sentencepiece_style_tokenizer(folder: Path) -> None:
    """A tokenizer.json laid out as TinyLlama's: BPE over "▁"-joined words with byte fallback, the "▁"
    prepended by a normalizer, a BOS added around a text."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256))]
    tokenizer.train_from_iterator(
        CORPUS * 4, trainer=trainers.BpeTrainer(vocab_size=600, special_tokens=specials)
    )
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=LLAMA_TEMPLATE,
    ).save_pretrained(folder)


def model_folder(
    tmp_path: Path, tiny_models: dict[str, Path], arch: str, tokenizer_class: str | None
) -> Path:
    folder = Path(
        shutil.copytree(tiny_models["llama" if arch == "sentencepiece" else arch], tmp_path / "source")
    )
    if arch == "sentencepiece":
        write_sentencepiece_style_tokenizer(folder)
    if tokenizer_class:
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text())
        config_path.write_text(json.dumps({**config, "tokenizer_class": tokenizer_class}))
    return install_ready(tmp_path / "models", "tiny", folder)


@pytest.mark.parametrize(("arch", "tokenizer_class"), CLASSES)
def test_the_kept_tokenizer_gives_transformers_ids_text_and_pieces(
    tmp_path: Path, tiny_models: dict[str, Path], arch: str, tokenizer_class: str | None
) -> None:
    directory = model_folder(tmp_path, tiny_models, arch, tokenizer_class)
    theirs = AutoTokenizer.from_pretrained(directory)
    built = load_tokenizer("tiny", directory)  # built by transformers, then kept
    assert (directory / KEPT_NAME).exists()
    kept = load_tokenizer("tiny", directory)  # read back without transformers
    for ours in (built, kept):
        for messages in CONVERSATIONS:
            expected = theirs.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
            assert ours.chat_ids(messages) == expected["input_ids"]
        for text in TEXTS:
            for special in (False, True):
                ids = theirs(text, add_special_tokens=special)["input_ids"]
                assert ours.encode(text, special=special) == ids
        with_specials = theirs.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True)["input_ids"]
        assert ours.decode(with_specials) == theirs.decode(with_specials, skip_special_tokens=True)
        assert ours.decode(with_specials, skip_special_tokens=False) == theirs.decode(with_specials)
        for token in range(len(theirs)):
            assert ours.piece(token) == theirs.convert_tokens_to_string([theirs.convert_ids_to_tokens(token)])
        assert (ours.eos_token_id, ours.pad_token_id) == (theirs.eos_token_id, theirs.pad_token_id)
        assert ours.model_max_length == theirs.model_max_length


def test_the_class_pipeline_is_what_is_kept(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    # Reading tokenizer.json alone would tokenize differently from transformers' LlamaTokenizer.
    directory = model_folder(tmp_path, tiny_models, "sentencepiece", "LlamaTokenizer")
    theirs = AutoTokenizer.from_pretrained(directory)
    assert type(theirs).__name__ == "LlamaTokenizer"
    prompt = theirs.apply_chat_template(CONVERSATIONS[1], add_generation_prompt=True, tokenize=False)
    as_file = (
        Tokenizer.from_file(str(directory / "tokenizer.json")).encode(prompt, add_special_tokens=False).ids
    )
    kept = load_tokenizer("tiny", directory)
    assert kept.chat_ids(CONVERSATIONS[1]) == theirs.encode(prompt, add_special_tokens=False) != as_file


def test_a_stale_or_damaged_copy_is_built_again(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    directory = model_folder(tmp_path, tiny_models, "qwen2", None)
    source = "tokenizer.json:abc"
    expected = load_tokenizer("tiny", directory).chat_ids(CONVERSATIONS[0])
    kept = directory / KEPT_NAME
    assert ChatTokenizer.load(kept, source) is None  # kept for other files
    for damage in ("{not json", json.dumps({"format": 1})):
        kept.write_text(damage)
        assert load_tokenizer("tiny", directory).chat_ids(CONVERSATIONS[0]) == expected
        assert json.loads(kept.read_text())["format"] == 1 and "backend" in json.loads(kept.read_text())


LOAD_KEPT = """
import json, sys
from pathlib import Path
from core.inference.loading import load_tokenizer
tokenizer = load_tokenizer("tiny", Path(sys.argv[1]))
ids = tokenizer.chat_ids([{"role": "user", "content": "Hello there!"}])
print(json.dumps({"ids": ids, "transformers": "transformers" in sys.modules}))
"""


def test_a_kept_tokenizer_is_read_without_importing_transformers(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    # transformers' imports were 0.3-1.3 s of every one-question `core chat` on 2 cores.
    directory = model_folder(tmp_path, tiny_models, "qwen2", None)
    runs = []
    for _run in ("builds", "reads"):
        command = [sys.executable, "-c", LOAD_KEPT, str(directory)]
        done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-1000:]
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert [run["transformers"] for run in runs] == [True, False]
    assert runs[0]["ids"] == runs[1]["ids"]


def test_templates_run_in_transformers_sandbox() -> None:
    assert (
        compile_template("{{ '%d' | format(7) }}{% generation %}kept{% endgeneration %}").render() == "7kept"
    )
    with pytest.raises(SecurityError):
        compile_template("{{ messages.__class__.__mro__ }}").render(messages=[])
    with pytest.raises(SecurityError):
        compile_template("{% set ns = namespace(_x=1) %}").render()
    with pytest.raises(TemplateError, match="only user turns"):
        compile_template("{{ raise_exception('only user turns') }}").render()
    assert compile_template("{{ {'a': 'é'} | tojson }}").render() == '{"a": "é"}'


def test_a_template_error_reaches_the_user_as_one_sentence(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    from core.inference.engine import LocalEngine
    from core.inference.params import GenerationParams

    directory = model_folder(tmp_path, tiny_models, "qwen2", None)
    (directory / "chat_template.jinja").write_text("{{ raise_exception('System turns are not supported.') }}")
    engine = LocalEngine(directory.parent, device="cpu", idle_unload_s=0)
    try:
        with pytest.raises(
            ChatTemplateError, match="rejected this conversation: System turns are not supported"
        ):
            list(engine.stream("tiny", CONVERSATIONS[0], GenerationParams(temperature=0, max_new_tokens=2)))
        with serving(engine, ["tiny"]) as url:  # an API client's conversation: its own fault, a 400
            answer = httpx2.post(
                f"{url}/chat/completions", json={"model": "tiny", "messages": CONVERSATIONS[0]}
            )
        assert answer.status_code == 400 and answer.json()["error"]["code"] == "chat_template", answer.text
    finally:
        engine.unload()


# Blocks on their own lines, indentation, a namespace, tojson: where jinja's settings show.
MULTILINE_TEMPLATE = """{%- set ns = namespace(system=false) %}
{% for message in messages %}
    {% if message['role'] == 'system' %}
        {%- set ns.system = true %}
<|im_start|>system
{{ message['content'] }}<|im_end|>
    {% else %}
<|im_start|>{{ message['role'] }}
{{ message['content'] }}{{ {'chars': message['content'] | length} | tojson }}<|im_end|>
    {% endif %}
{% endfor %}
{% if not ns.system %}(no system turn){% endif %}
{% if add_generation_prompt %}
<|im_start|>assistant
{% endif %}"""


def test_a_template_renders_as_transformers_renders_it(tiny_models: dict[str, Path]) -> None:
    theirs = AutoTokenizer.from_pretrained(tiny_models["qwen2"])
    for messages in CONVERSATIONS:
        expected = theirs.apply_chat_template(
            messages, chat_template=MULTILINE_TEMPLATE, add_generation_prompt=True, tokenize=False
        )
        rendered = compile_template(MULTILINE_TEMPLATE).render(messages=messages, add_generation_prompt=True)
        assert rendered == expected


def test_a_full_disk_leaves_the_tokenizer_working_and_no_partial_file(
    tmp_path: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = model_folder(tmp_path, tiny_models, "qwen2", None)
    real_write = Path.write_text

    def disk_full(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real_write(self, text[: len(text) // 2], *args, **kwargs)  # half of it reached the disk
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    tokenizer = load_tokenizer("tiny", directory)
    assert tokenizer.chat_ids(CONVERSATIONS[0])  # built by transformers, used, just not kept
    assert sorted(p.name for p in directory.iterdir() if p.name.startswith(".localllm-tok")) == []


def test_thinking_off_renders_qwen3s_empty_reasoning_and_on_leaves_the_template_its_default(
    tiny_models: dict[str, Path],
) -> None:
    backend = Tokenizer.from_file(str(tiny_models["qwen2"] / "tokenizer.json"))
    default_on = (
        "{% if enable_thinking is defined and enable_thinking is false %}quick{% else %}think{% endif %}"
    )
    default_off = "{% if enable_thinking is defined %}switched{% else %}plain{% endif %}"
    rendered = []
    for template in (QWEN3_TEMPLATE, default_on, default_off, LLAMA_TEMPLATE):
        tokenizer = ChatTokenizer(backend, template, {"eos_token": "</s>"}, None, None, 512, clean_up=False)
        on, off = (
            tokenizer.decode(
                tokenizer.chat_ids(CONVERSATIONS[0], thinking=thinking), skip_special_tokens=False
            )
            for thinking in (True, False)
        )
        rendered.append((tokenizer.switches_thinking, on, off))
    qwen3, default_on_result, default_off_result, llama = rendered
    assert qwen3[0] and qwen3[2] == qwen3[1] + "<think>\n\n</think>\n\n"
    assert default_on_result == (True, "think", "quick")
    assert default_off_result == (True, "plain", "switched")  # True is the template's own default
    assert not llama[0] and llama[1] == llama[2]  # a template without the switch renders the same


def test_reading_a_kept_tokenizer_waits_while_another_thread_imports_the_runtime(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    # The engine's thread imports transformers (and with it tokenizers) under loading's import lock; a
    # page counting tokens meanwhile once imported tokenizers beside it and got a half-initialized module.
    directory = model_folder(tmp_path, tiny_models, "qwen2", None)
    load_tokenizer("tiny", directory)  # now kept beside the model
    read = threading.Event()
    with loading._IMPORT_LOCK:  # held, as import_ahead holds it on the engine's thread
        reader = threading.Thread(target=lambda: (load_tokenizer("tiny", directory), read.set()))
        reader.start()
        assert not read.wait(0.5)  # the page waits for the import to finish
    assert read.wait(30)
    reader.join()


# Each family's way of ending a reply, as its chat template writes it (abridged from the published ones).
END_OF_TURN_TEMPLATES = {
    "<|eot_id|>": (  # Llama 3
        "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
        " + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "<end_of_turn>": (  # Gemma
        "{{ bos_token }}{% for m in messages %}"
        "{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
    "<|end|>": (  # Phi-3
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    ),
}


@pytest.mark.parametrize("end", list(END_OF_TURN_TEMPLATES))
def test_a_reply_ends_at_the_token_its_template_writes_after_it(end: str) -> None:
    """The model's own end of turn, found in its template, beside the tokenizer's end of text: a chat
    fine-tune's generation_config may name only its base model's end."""
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<start_of_turn>", "<end_of_turn>", "<|end|>", "<|user|>",
                "<|assistant|>"]  # fmt: skip
    backend = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    backend.add_special_tokens(specials)
    ids = {token: backend.token_to_id(token) for token in specials}
    named = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
    chat = ChatTokenizer(backend, END_OF_TURN_TEMPLATES[end], named, ids["<|end_of_text|>"], None, 4096,
                         clean_up=False)  # fmt: skip
    assert chat.turn_end_ids == {ids["<|end_of_text|>"], ids[end]}
    refusing = ChatTokenizer(backend, "{{ raise_exception('no') }}", {}, ids["<|end_of_text|>"], None, 4096,
                             clean_up=False)  # fmt: skip
    assert refusing.turn_end_ids == {ids["<|end_of_text|>"]}  # a template that refuses: the end of text


def test_a_reply_goes_on_from_what_the_model_wrote_even_where_its_template_rewrites_replies(
    tmp_path: Path,
) -> None:
    """DeepSeek-R1's template drops an earlier reply's reasoning: a reply cut after its reasoning could not
    be found in the rendered conversation to go on from. The prompt is now what the model read as it
    wrote: the conversation with its generation prompt, then the reply as written."""
    from core.inference.prompts import Continuation, prompt_ids

    tiny = load_tokenizer("tiny", build_tiny_model(tmp_path / "m"))
    strips_reasoning = (
        "{% for m in messages %}{% set content = m['content'].split('</think>')[-1] %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + content + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n<think>\\n' }}{% endif %}"
    )
    r1 = ChatTokenizer(tiny.backend, strips_reasoning, tiny.special_tokens, tiny.eos_token_id,
                       tiny.pad_token_id, tiny.model_max_length, tiny.clean_up)  # fmt: skip
    question = {"role": "user", "content": "How far is the moon?"}
    written = "The moon is far.\n</think>\n\nAbout 384,000"
    ids = prompt_ids(r1, Continuation((question, {"role": "assistant", "content": written})))
    assert ids == r1.encode(r1.chat_text([question]) + written)
    assert "The moon is far." in r1.decode(ids)  # the reasoning it wrote, which the template drops
