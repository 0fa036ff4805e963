"""``chat_template`` of a merge config: a template name, ``auto`` or a Jinja string, written
to the output's ``chat_template.jinja`` (where transformers reads it first, and where
mergekit writes it).

The named templates are fusechat's own wording of each family's chat format, checked to
render exactly what mergekit 0.1.5's template of the same name renders through
transformers' ``apply_chat_template`` (``tests/test_merge_templates.py``), so a model merged
by either tool is prompted the same way. Each is one line of literal strings, so the text
rendered does not depend on the renderer's ``trim_blocks`` / ``lstrip_blocks``. Where
mergekit's rendering departs from the family's published format, it is followed and the
departure is said below (docs/merging.md, "chat_template").

``auto`` (mergekit's rule, observed): the template most of the merge's models carry, each
model counted once (the base included; a ``base+adapter`` model by its base folder, the
adapter folder's tokenizer files are not read), a model's template being its
``chat_template.jinja`` or else the ``chat_template`` of its ``tokenizer_config.json`` (the
``default`` one of a list), as transformers loads it. Models without one do not count; when
none has one, no template is written (the output keeps what the copied tokenizer files
hold, which is then none). A tie goes to the base's template when it is one of the tied,
else to the one met first in config order (mergekit breaks ties by set order, which varies
between runs).
"""
import difflib
import json
import logging
import os
from collections import Counter

from ..errors import ConfigError
from .lora import folder_of

LOG = logging.getLogger(__name__)

AUTO = "auto"

# ChatML: <|im_start|>role\ncontent<|im_end|>\n, generation prompt <|im_start|>assistant\n
CHATML = ("{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

# Llama 3: BOS once, then <|start_header_id|>role<|end_header_id|>\n\n + trimmed content +
# <|eot_id|> per message; mergekit adds a newline after each <|eot_id|> (Meta's does not)
LLAMA3 = ("{{ bos_token }}"
          "{% for message in messages %}"
          "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
          "{{ (message['content'] | trim) + '<|eot_id|>\\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")

# Mistral Instruct: BOS, then " [INST] user [/INST]" and " assistant</s>" strictly
# alternating; an optional first system message is put before the first user message,
# followed by a blank line; other roles and broken alternation are refused. No generation
# prompt (the model answers after [/INST]).
MISTRAL = ("{% if messages[0]['role'] == 'system' %}"
           "{% set system_message = messages[0]['content'] %}"
           "{% set loop_messages = messages[1:] %}"
           "{% else %}{% set loop_messages = messages %}{% endif %}"
           "{{ bos_token }}"
           "{% for message in loop_messages %}"
           "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('After the optional system message, conversation roles must "
           "alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if message['role'] == 'user' %}"
           "{% if loop.first and system_message is defined %}"
           "{{ ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
           "{% else %}{{ ' [INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
           "{% elif message['role'] == 'assistant' %}"
           "{{ ' ' + message['content'] + eos_token }}"
           "{% else %}{{ raise_exception('Only user and assistant roles are supported, with "
           "the exception of an initial optional system message!') }}{% endif %}"
           "{% endfor %}")

# Alpaca: the (last) system message as the preamble, a blank line, then "### Instruction:\n"
# + user text and "### Response:\n" + assistant text, trimmed, separated by blank lines;
# other roles print nothing. The generation prompt "### Response:\n" follows unless the
# conversation ends with the assistant (as mergekit renders it: without a blank line before)
ALPACA = ("{% set ns = namespace(system='') %}"
          "{% for message in messages %}{% if message['role'] == 'system' %}"
          "{% set ns.system = message['content'] | trim %}{% endif %}{% endfor %}"
          "{{ ns.system + '\\n\\n' }}"
          "{% for message in messages %}"
          "{% if message['role'] == 'user' %}"
          "{{ '### Instruction:\\n' + (message['content'] | trim) }}"
          "{% elif message['role'] == 'assistant' %}"
          "{{ '### Response:\\n' + (message['content'] | trim) }}{% endif %}"
          "{% if message['role'] in ('user', 'assistant') and not loop.last %}"
          "{{ '\\n\\n' }}{% endif %}"
          "{% endfor %}"
          "{% if add_generation_prompt and messages[-1]['role'] != 'assistant' %}"
          "{{ '### Response:\\n' }}{% endif %}")

# EXAONE 3: [|role|]content, then [|endofturn|] after every role but user; an empty system
# turn when the conversation does not open with one; generation prompt [|assistant|].
# mergekit's rendering also carries its template's indentation (4 spaces before each turn,
# 8 before the empty system turn, a newline and 8 spaces after the content, a blank line
# after each turn): kept, so the two tools' outputs prompt alike
_EX_IND, _EX_IND2 = " " * 4, " " * 8
EXAONE = ("{% if messages[0]['role'] != 'system' %}"
          f"{{{{ '{_EX_IND2}[|system|][|endofturn|]\\n\\n' }}}}{{% endif %}}"
          "{% for message in messages %}"
          f"{{{{ '{_EX_IND}[|' + message['role'] + '|]' + message['content'] + "
          f"'\\n{_EX_IND2}' }}}}"
          "{% if message['role'] != 'user' %}{{ '[|endofturn|]' }}{% endif %}"
          "{{ '\\n\\n' }}"
          "{% endfor %}"
          f"{{% if add_generation_prompt %}}{{{{ '{_EX_IND}[|assistant|]\\n' }}}}{{% endif %}}")

TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "mistral": MISTRAL, "alpaca": ALPACA,
             "exaone": EXAONE}
NAMES = sorted([*TEMPLATES, AUTO])


def chat_template(value, where):
    """The Jinja text of a chat_template value (a name in TEMPLATES or a Jinja string), or
    AUTO, resolved against the models by :func:`resolve`."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a template name ({', '.join(NAMES)}) or a "
                          f"Jinja string, got {value!r}")
    if value in TEMPLATES:
        return TEMPLATES[value]
    if value == AUTO:
        return AUTO
    if "{{" in value or "{%" in value:
        try:
            import jinja2
        except ImportError:
            return value
        try:
            jinja2.Environment().parse(value)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError(f"{where}: not a valid Jinja template: {exc}") from None
        return value
    close = difflib.get_close_matches(value.lower(), NAMES, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"{where}: {value!r} is neither a template name ({', '.join(NAMES)})"
                      f" nor a Jinja template{hint}")


def model_template(folder):
    """The chat template a model folder's tokenizer carries, as transformers loads it:
    chat_template.jinja, else tokenizer_config.json's chat_template (a string, or the
    ``default`` entry of a list of {name, template}); None when it has none."""
    path = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            return f.read()
    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            tpl = json.load(f).get("chat_template")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ConfigError(f"{path}: not a JSON object ({exc}); chat_template: auto "
                              "reads the chat_template there") from None
    if isinstance(tpl, list):
        tpl = next((t.get("template") for t in tpl
                    if isinstance(t, dict) and t.get("name") == "default"), None)
    return tpl if isinstance(tpl, str) and tpl else None


def resolve(template, model_paths, base=None):
    """The Jinja text to write for a config's chat_template (None: write none). AUTO is
    the template most models carry (see the module docstring for the rule)."""
    if template != AUTO:
        return template
    folders = list(dict.fromkeys(folder_of(p) for p in model_paths))
    found = {f: model_template(f) for f in folders if os.path.isdir(f)}
    counts = Counter(t for t in found.values() if t is not None)
    if not counts:
        LOG.info("chat_template: auto: no model carries a chat template; none written")
        return None
    top = max(counts.values())
    tied = [t for t in counts if counts[t] == top]  # in config order (Counter keeps it)
    base_tpl = found.get(folder_of(base)) if base else None
    pick = base_tpl if base_tpl in tied else tied[0]
    owner = next(f for f, t in found.items() if t == pick)
    LOG.info("chat_template: auto: the template of %s (%d of %d models)", owner, top,
             len(folders))
    return pick
