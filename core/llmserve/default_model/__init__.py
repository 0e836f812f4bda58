"""The embedded default model: what ``LLM()`` serves when no model is named.

A 7.3M-parameter ``LlamaForCausalLM`` (bfloat16 safetensors, about 15 MB) with a 4096-token
byte-level BPE tokenizer, trained by ``scripts/train_default_model.py`` on CPython 3.11.7's
``pydoc_data.topics``; see README.md in this folder (the model card). It needs no network.
"""

from __future__ import annotations

from pathlib import Path

#: The folder holding config.json, model.safetensors, generation_config.json and the tokenizer.
DEFAULT_MODEL_PATH: Path = Path(__file__).resolve().parent

#: A 1.26M-parameter draft model for speculative decoding (same tokenizer; see draft/README.md).
DRAFT_MODEL_PATH: Path = DEFAULT_MODEL_PATH / "draft"

#: An EAGLE-1 head of 0.92M parameters for the ``eagle`` method (see eagle/README.md).
EAGLE_MODEL_PATH: Path = DEFAULT_MODEL_PATH / "eagle"

#: Greedy continuations recorded with HF transformers 5.24 on CPU in float32
#: (``model.generate(do_sample=False, max_new_tokens=24)``, no special tokens added to the
#: prompt). Each prompt is the exact opening of a passage of the training text, and the
#: continuation is the text that follows it there.
GREEDY_SAMPLES: tuple[dict, ...] = (
    {
        "prompt": "Assert statements are a convenient way to",
        "prompt_token_ids": [36, 594, 3310, 1218, 361, 264, 3231, 1380, 313],
        "token_ids": [3199, 2382, 380, 792, 1662, 202, 472, 82, 264, 1290, 29, 343, 380,
                      2488, 66, 941, 545, 272, 3656, 5, 548, 1674, 548, 64],
        "text": ' insert debugging assertions\ninto a program:\n\n'
                '   assert_stmt ::= "assert" expression ["," expression]',
    },
    {
        "prompt": 'The "while" statement is used for',
        "prompt_token_ids": [344, 272, 2498, 5, 470, 296, 551, 345],
        "token_ids": [2397, 995, 380, 1860, 380, 301, 202, 796, 296, 1120, 29, 343, 1482, 66,
                      941, 545, 272, 2498, 5, 757, 66, 796, 1048, 731],
        "text": ' repeated execution as long as an\nexpression is true:\n\n'
                '   while_stmt ::= "while" assignment_expression ":" suite',
    },
    {
        "prompt": '"pass" is a null operation',
        "prompt_token_ids": [5, 1695, 306, 5, 296, 264, 305, 2141, 1079],
        "token_ids": [1968, 601, 387, 296, 838, 15, 3709, 2996, 17, 1043, 202, 357, 2465, 380,
                      264, 1896, 75, 502, 649, 601, 264, 470, 296, 1723],
        "text": " \u2014 when it is executed, nothing happens. It\n"
                "is useful as a placeholder when a statement is required",
    },
)

__all__ = ["DEFAULT_MODEL_PATH", "DRAFT_MODEL_PATH", "EAGLE_MODEL_PATH", "GREEDY_SAMPLES"]
