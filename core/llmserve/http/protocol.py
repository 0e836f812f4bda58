"""Request and response bodies of the HTTP API, following OpenAI's wire format.

Requests are strict (``"16"`` is not an integer, ``1`` is not a boolean) and closed: a field
OpenAI and vLLM do not define is rejected with a 400 naming it, instead of being silently
ignored. vLLM's extra sampling fields (``top_k``, ``min_p``, ``repetition_penalty``,
``min_tokens``, ``ignore_eos``, ...) and its structured-output fields (``structured_outputs``
and the older ``guided_json`` / ``guided_regex`` / ``guided_choice`` / ``guided_grammar``)
sit beside OpenAI's ``response_format``, ``tools`` and ``tool_choice``.
Responses are built as plain dicts on the hot path; the models here document them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from llmserve.sampling_params import MAX_LOGPROBS

TokenId = Annotated[int, Field(ge=0)]
StopString = Annotated[str, Field(min_length=1)]
TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]+$")]


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())


# -- requests ---------------------------------------------------------------------------------


class StreamOptions(OpenAIBaseModel):
    include_usage: Optional[bool] = Field(
        False, description="send a last chunk (empty choices) with the request's usage")
    continuous_usage_stats: Optional[bool] = Field(
        False, description="vLLM extra: usage so far in every chunk")
    include_obfuscation: Optional[bool] = Field(None, description="accepted and ignored")


class JsonSchemaFormat(OpenAIBaseModel):
    name: str = Field(description="accepted and ignored")
    description: Optional[str] = Field(None, description="accepted and ignored")
    schema_: Optional[dict[str, Any]] = Field(None, alias="schema",
                                              description="the JSON schema the output follows")
    strict: Optional[bool] = Field(None, description="accepted; the schema is always enforced")


class ResponseFormat(OpenAIBaseModel):
    """OpenAI's ``response_format``: ``text`` (no constraint), ``json_object`` (any JSON
    object) or ``json_schema`` (an object that validates against ``json_schema.schema``)."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class _SamplingRequest(OpenAIBaseModel):
    """Fields completions and chat completions share."""

    model: Optional[str] = Field(None, description="a served model name; default: the first")
    n: int = Field(1, ge=1, le=128, description="completions per prompt")
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    presence_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(None, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[TokenIdKey, float]] = Field(
        None, description="token id (as a string) -> bias, clamped to [-100, 100]")
    seed: Optional[int] = Field(None, ge=-(2**63), lt=2**64)
    stop: Optional[Union[StopString, list[StopString]]] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    user: Optional[str] = Field(
        None, description="the tenant scheduling policies account the request to, unless an "
                          "X-Tenant header names one")
    # vLLM's extras.
    top_k: Optional[int] = Field(None, ge=-1, description="0 or -1 disables top-k")
    min_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(None, gt=0.0, le=10.0)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    stop_token_ids: Optional[list[TokenId]] = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    priority: int = Field(0, description="lower runs first under --scheduling-policy priority")
    ttft_target_s: Optional[float] = Field(
        None, gt=0, description="llmserve extra: time-to-first-token target in seconds "
                                "(read by the deadline policy)")
    latency_target_s: Optional[float] = Field(
        None, gt=0, description="llmserve extra: arrival-to-finish target in seconds "
                                "(read by the deadline policy)")
    prompt_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    allowed_token_ids: Optional[list[TokenId]] = Field(None, min_length=1)
    # Structured outputs: at most one of these may constrain a request.
    response_format: Optional[ResponseFormat] = None
    structured_outputs: Optional[dict[str, Any]] = Field(
        None, description="vLLM extra: StructuredOutputsParams fields (json, json_object, "
                          "regex, choice, grammar, disable_any_whitespace, disable_fallback)")
    guided_json: Optional[Union[str, dict[str, Any]]] = Field(
        None, description="vLLM extra (older name of structured_outputs.json)")
    guided_regex: Optional[str] = Field(
        None, min_length=1, description="vLLM extra (older name of structured_outputs.regex)")
    guided_choice: Optional[list[StopString]] = Field(
        None, min_length=1, description="vLLM extra (older name of structured_outputs.choice)")
    guided_grammar: Optional[str] = Field(
        None, min_length=1, description="vLLM extra (older name of structured_outputs.grammar)")


class CompletionRequest(_SamplingRequest):
    prompt: Union[str, list[str], list[TokenId], list[list[TokenId]]] = Field(
        description="text, a list of texts, token ids, or a list of token-id lists")
    max_tokens: Optional[int] = Field(16, ge=1)
    echo: Optional[bool] = Field(False, description="prepend the prompt to each completion")
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: Optional[str] = Field(None, description="not supported: must be null")
    best_of: Optional[int] = Field(None, ge=1, le=128, description="must equal n if given")
    add_special_tokens: bool = True


class ChatContentPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class _EchoedModel(BaseModel):
    """Parts of assistant messages echoed back from a response: keys this server does not
    use (``refusal``, ``annotations``, ...) are ignored rather than rejected."""

    model_config = ConfigDict(extra="ignore", strict=True)


class FunctionCallPart(_EchoedModel):
    name: str
    arguments: str = Field(description="the arguments as JSON text")


class ToolCallPart(_EchoedModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallPart


class ChatMessage(_EchoedModel):
    """One message. An assistant message may carry the ``tool_calls`` it made, a ``tool``
    message the ``tool_call_id`` it answers; both reach the chat template."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[ChatContentPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCallPart]] = None
    tool_call_id: Optional[str] = None


class FunctionDefinition(OpenAIBaseModel):
    name: str = Field(min_length=1)
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(
        None, description="JSON schema of the arguments; absent: no arguments")
    strict: Optional[bool] = Field(None, description="accepted and ignored")


class FunctionTool(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(OpenAIBaseModel):
    name: str


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    max_tokens: Optional[int] = Field(None, ge=1, description="deprecated by OpenAI")
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: Optional[list[FunctionTool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], NamedToolChoice]] = Field(
        None, description='default: "auto" when tools are given, else "none"')
    parallel_tool_calls: Optional[bool] = Field(
        None, description="false: at most one tool call per answer")
    modalities: Optional[list[Literal["text"]]] = None
    metadata: Optional[dict[str, str]] = None
    store: Optional[bool] = None
    service_tier: Optional[str] = None
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    # vLLM's extras.
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None


class TokenizeCompletionRequest(OpenAIBaseModel):
    model: Optional[str] = None
    prompt: str
    add_special_tokens: bool = True


class TokenizeChatRequest(OpenAIBaseModel):
    model: Optional[str] = None
    messages: list[ChatMessage] = Field(min_length=1)
    tools: Optional[list[FunctionTool]] = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template: Optional[str] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None


TokenizeRequest = Union[TokenizeCompletionRequest, TokenizeChatRequest]


class DetokenizeRequest(OpenAIBaseModel):
    model: Optional[str] = None
    tokens: list[TokenId]


# -- responses --------------------------------------------------------------------------------


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class UsageInfo(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: Optional[PromptTokensDetails] = None


class CompletionLogprobs(BaseModel):
    text_offset: list[int]
    token_logprobs: list[Optional[float]]
    tokens: list[str]
    top_logprobs: list[Optional[dict[str, float]]]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[Literal["stop", "length", "abort"]] = None
    stop_reason: Union[int, str, None] = Field(
        None, description="vLLM extra: the stop string or token id that ended the choice")
    prompt_logprobs: Optional[list[Optional[dict[str, Any]]]] = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Optional[UsageInfo] = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class ChatLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(BaseModel):
    content: Optional[list[ChatLogprob]] = None


class FunctionCall(BaseModel):
    name: str
    arguments: str


class ToolCallResponse(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[list[ToolCallResponse]] = None


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: Optional[ChatChoiceLogprobs] = None
    finish_reason: Optional[Literal["stop", "length", "abort", "tool_calls"]] = None
    stop_reason: Union[int, str, None] = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    prompt_logprobs: Optional[list[Optional[dict[str, Any]]]] = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmserve"
    root: str
    parent: Optional[str] = None
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo
