"""Protocol details of PAPER.md that no other module's tests own: the chat template's date."""

from transformers import AutoTokenizer

from soar import paths
from soar.sampling import encode_prompts

# The date logic of the Llama-3.1/3.2 chat templates, reduced to what matters here.
LLAMA3_DATE = ("{%- if not date_string is defined %}{%- set date_string = strftime_now('%d %b %Y') %}{%- endif %}"
               "Today Date: {{ date_string }}\n{% for m in messages %}{{ m['content'] }}{% endfor %}")


def test_chat_prompts_carry_a_fixed_date_not_todays():
    """A prompt must not change from day to day: the fail@k set, caches and resumes depend on it."""
    tok = AutoTokenizer.from_pretrained(paths.MODELS / "smollm2-135m-instruct")
    tok.chat_template = LLAMA3_DATE
    text = tok.decode(encode_prompts(tok, [[{"role": "user", "content": "What is 1 + 1?"}]])[0])
    assert "Today Date: 26 Jul 2024" in text
