#!/usr/bin/env python3
"""Chat-template renderings for Tests/QLoRATests/Generation/ChatTemplateTests.swift.

Renders a few conversations through each family's Jinja template the way transformers'
apply_chat_template does (jinja2 ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
raise_exception), and writes Tests/QLoRATests/Fixtures/chat-templates.json.
Pinned: python 3.11, jinja2 3.1.x (the /work/venv-fixtures of transformers 5.23). No randomness.

The first templates are written out here: SmolLM2-135M-Instruct's (as in its GGUF), Meta Llama 3
8B Instruct's and Llama 2 chat's, as their tokenizer_config.json hold them; they render the
first four conversations with the environment below, and their cases come first, unchanged.
Then (usage: make_chat_template_fixtures.py [--sdist PATH]) the real templates of other models,
each with "family": the built-in ChatTemplate family whose hand-written rendering must match
it too, or null where no family does (the Jinja interpreter must match them all); rendered by
transformers' own render_jinja_template (transformers 5.23), a case holding "error" where the
template raises:
  - written out: Gemma 3's (google/gemma-3-*-it tokenizer_config.json) and Phi-3's first
    (the tokenizer.chat_template of llama.cpp's models/ggml-vocab-phi-3.gguf);
  - from llama.cpp's models/templates/ in the llama-cpp-python sdist pinned in
    fetch_llama_cpp_vocabs.py (downloaded from PyPI unless --sdist is given): SDIST_TEMPLATES.
Llama 3.x templates get date_string "26 Jul 2024", so that none reads the clock.
"""
import json
import sys
import tarfile
import tempfile
from pathlib import Path

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

import fixture_common as fc
import fetch_llama_cpp_vocabs as fetch

TEMPLATES = {
    "smollm2": {
        "bos": "<|im_start|>", "eos": "<|im_end|>",
        "template": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    },
    "llama3": {
        "bos": "<|begin_of_text|>", "eos": "<|eot_id|>",
        "template": "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}",
    },
    "llama2": {
        "bos": "<s>", "eos": "</s>",
        "template": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    },
}

CONVERSATIONS = {
    "user": [{"role": "user", "content": "What is the capital of France?"}],
    "system_user": [{"role": "system", "content": "You answer in one word."},
                    {"role": "user", "content": "What is the capital of France?"}],
    "multi_turn": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": " Hi! "},
                   {"role": "assistant", "content": "Hello.\n"},
                   {"role": "user", "content": "2+2?"}],
    "multi_turn_no_system": [{"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "Hello"},
                             {"role": "user", "content": "Bye"}],
}


GEMMA3 = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n{%- if add_generation_prompt -%}\n    {{'<start_of_turn>model\\n'}}\n{%- endif -%}\n"
)
PHI3_GGUF = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') %}"
             "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
             "{% elif (message['role'] == 'assistant') %}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}")

# name: (bos, eos, family, where the template comes from)
REAL_TEMPLATES = {
    "gemma3": ("<bos>", "<eos>", "gemma", "google/gemma-3-*-it tokenizer_config.json", GEMMA3),
    "phi3-gguf": ("<s>", "<|endoftext|>", "phi3-legacy", "llama.cpp models/ggml-vocab-phi-3.gguf tokenizer.chat_template", PHI3_GGUF),
}
SDIST_TEMPLATES = {
    "gemma2": ("<bos>", "<eos>", "gemma", "google-gemma-2-2b-it.jinja"),
    "phi3.5": ("<s>", "<|endoftext|>", "phi3", "microsoft-Phi-3.5-mini-instruct.jinja"),
    "qwen2.5": ("", "<|im_end|>", "chatml", "Qwen-Qwen2.5-7B-Instruct.jinja"),
    "qwen3": ("", "<|im_end|>", None, "Qwen-Qwen3-0.6B.jinja"),
    "smollm3": ("", "<|im_end|>", None, "HuggingFaceTB-SmolLM3-3B.jinja"),
    "llama3.1": ("<|begin_of_text|>", "<|eot_id|>", None, "meta-llama-Llama-3.1-8B-Instruct.jinja"),
    "llama3.2": ("<|begin_of_text|>", "<|eot_id|>", None, "meta-llama-Llama-3.2-3B-Instruct.jinja"),
    "mistral-nemo": ("<s>", "</s>", None, "mistralai-Mistral-Nemo-Instruct-2407.jinja"),
    "apriel1.5": ("<s>", "</s>", None, "unsloth-Apriel-1.5.jinja"),
    "glm4.6": ("", "<|endoftext|>", None, "GLM-4.6.jinja"),
}

# Rendered by every template after the first four (and by the real templates).
MORE_CONVERSATIONS = {
    "empty_system": [{"role": "system", "content": ""},
                     {"role": "user", "content": "Hi"},
                     {"role": "assistant", "content": " Hello "}],
    "assistant_last": [{"role": "system", "content": " Be brief. \n"},
                       {"role": "user", "content": "2+2?"},
                       {"role": "assistant", "content": "4"}],
}


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def real_templates(sdist: Path) -> dict:
    templates = {name: {"bos": bos, "eos": eos, "template": text, "family": family, "source": source}
                 for name, (bos, eos, family, source, text) in REAL_TEMPLATES.items()}
    with tarfile.open(sdist) as tar:
        for name, (bos, eos, family, file) in SDIST_TEMPLATES.items():
            text = tar.extractfile(fetch.MODELS + "templates/" + file).read().decode()
            source = f"{fetch.PACKAGE}=={fetch.VERSION} vendor/llama.cpp/models/templates/{file}"
            templates[name] = {"bos": bos, "eos": eos, "template": text, "family": family, "source": source}
    return templates


def render_real(t: dict, messages: list, gen: bool) -> dict:
    from transformers.utils.chat_template_utils import render_jinja_template
    try:
        rendered, _ = render_jinja_template([messages], chat_template=t["template"], add_generation_prompt=gen,
                                            bos_token=t["bos"], eos_token=t["eos"], date_string="26 Jul 2024")
        return {"text": rendered[0]}
    except jinja2.exceptions.TemplateError as e:
        return {"error": str(e)}


def main(argv):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    cases = []
    for name, t in TEMPLATES.items():
        template = env.from_string(t["template"])
        for conv_name, messages in CONVERSATIONS.items():
            for gen in (True, False):
                text = template.render(messages=messages, add_generation_prompt=gen, bos_token=t["bos"], eos_token=t["eos"])
                cases.append({"template": name, "conversation": conv_name, "add_generation_prompt": gen, "text": text})
    for name, t in TEMPLATES.items():
        template = env.from_string(t["template"])
        for conv_name, messages in MORE_CONVERSATIONS.items():
            for gen in (True, False):
                text = template.render(messages=messages, add_generation_prompt=gen, bos_token=t["bos"], eos_token=t["eos"])
                cases.append({"template": name, "conversation": conv_name, "add_generation_prompt": gen, "text": text})
    with tempfile.TemporaryDirectory() as tmp:
        real = real_templates(Path(argv[1]) if argv[:1] == ["--sdist"] else fetch.download_sdist(Path(tmp)))
    conversations = {**CONVERSATIONS, **MORE_CONVERSATIONS}
    for name, t in real.items():
        for conv_name, messages in conversations.items():
            for gen in (True, False):
                cases.append({"template": name, "conversation": conv_name, "add_generation_prompt": gen, **render_real(t, messages, gen)})
    out = {"generator": {"script": "tools/make_chat_template_fixtures.py", "jinja2": jinja2.__version__},
           "templates": {**TEMPLATES, **real}, "conversations": conversations, "cases": cases}
    path = fc.QLORA_FIXTURES / "chat-templates.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(cases)} renderings")


if __name__ == "__main__":
    main(sys.argv[1:])
