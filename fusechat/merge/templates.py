"""``chat_template`` of a merge config: a template name or a Jinja string, written to the
output's ``chat_template.jinja`` (where transformers reads it first, and where mergekit
writes it)."""
from ..errors import ConfigError

# fusechat's own wording of the ChatML format (<|im_start|>role\ncontent<|im_end|>\n)
CHATML = ("{% for message in messages %}"
          "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

TEMPLATES = {"chatml": CHATML}


def chat_template(value, where):
    """The Jinja text of a chat_template value: a name in TEMPLATES or a Jinja string."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a template name or a Jinja string, got {value!r}")
    if value in TEMPLATES:
        return TEMPLATES[value]
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
    raise ConfigError(f"{where}: {value!r} is neither a template name fusechat knows "
                      f"({', '.join(TEMPLATES)}) nor a Jinja template (mergekit's other names, "
                      "llama3, mistral, alpaca, exaone and auto, are not supported: give the "
                      "template's Jinja text)")
