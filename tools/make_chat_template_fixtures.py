#!/usr/bin/env python3
"""Chat-template renderings for Tests/QLoRATests/Generation/ChatTemplateTests.swift.

Renders a few conversations through each family's Jinja template the way transformers'
apply_chat_template does (jinja2 ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
raise_exception), and writes Tests/QLoRATests/Fixtures/chat-templates.json.
Pinned: python 3.11, jinja2 3.1.x (the /work/venv-fixtures of transformers 5.23). No randomness.

The templates are written out here: SmolLM2-135M-Instruct's (as in its GGUF), Meta Llama 3
8B Instruct's and Llama 2 chat's, as their tokenizer_config.json hold them.
"""
import json

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

import fixture_common as fc

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


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def main():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    cases = []
    for name, t in TEMPLATES.items():
        template = env.from_string(t["template"])
        for conv_name, messages in CONVERSATIONS.items():
            for gen in (True, False):
                text = template.render(messages=messages, add_generation_prompt=gen, bos_token=t["bos"], eos_token=t["eos"])
                cases.append({"template": name, "conversation": conv_name, "add_generation_prompt": gen, "text": text})
    out = {"generator": {"script": "tools/make_chat_template_fixtures.py", "jinja2": jinja2.__version__},
           "templates": TEMPLATES, "conversations": CONVERSATIONS, "cases": cases}
    path = fc.QLORA_FIXTURES / "chat-templates.json"
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(cases)} renderings")


if __name__ == "__main__":
    main()
