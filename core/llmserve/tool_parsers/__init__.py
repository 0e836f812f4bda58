"""Tool-call parsers: model-specific text -> OpenAI ``tool_calls``.

``ToolParser`` and its value types (``llmserve.tool_parsers.base``) are what a plugin
implements and returns from the ``llmserve_tool_parsers`` hook. The core contributes
``"hermes"`` (``llmserve.tool_parsers.hermes``) and ``"llama3_json"``
(``llmserve.tool_parsers.llama3_json``).
"""

from llmserve.tool_parsers.base import (
    DeltaBuilder,
    DeltaMessage,
    DeltaToolCall,
    ExtractedToolCalls,
    ToolCall,
    ToolParser,
)

__all__ = [
    "DeltaBuilder",
    "DeltaMessage",
    "DeltaToolCall",
    "ExtractedToolCalls",
    "ToolCall",
    "ToolParser",
]
