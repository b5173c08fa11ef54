"""Request bodies of the HTTP API (pydantic): the OpenAI fields plus the diffusion settings (dlm extensions),
validated alike; an unknown field, a value out of range or an unknown policy/cache name is a 400 naming it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from ..sampling import POLICIES
from ..sampling.caches import CACHES


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's response_format: free text, any JSON object, or JSON valid under a schema."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @field_validator("json_schema")
    @classmethod
    def _schema_only_for_json_schema(cls, v, info):
        if v is not None and info.data.get("type") != "json_schema":
            raise ValueError("json_schema is given only with type 'json_schema'")
        return v


class Settings(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int = Field(64, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, le=2**62)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    stream: bool = False
    user: str | None = None
    # diffusion settings (dlm extensions)
    steps: int | None = Field(None, ge=1, le=4096)
    block_length: int | None = Field(None, ge=1, le=4096)
    policy: str | None = None
    threshold: float | None = Field(None, gt=0.0, le=1.0)
    cfg_scale: float | None = Field(None, ge=0.0, le=20.0)
    cache: str | None = None
    remask: int | None = Field(None, ge=0, le=4096)  # ReMDM-style revision (see GenerationConfig)
    ignore_eos: bool = False  # as in vLLM: generate max_tokens even past EOS
    # structured output: OpenAI's response_format, or vLLM's guided_regex / guided_grammar (Lark) extras
    response_format: ResponseFormat | None = None
    guided_regex: str | None = Field(None, min_length=1, max_length=4096)
    guided_grammar: str | None = Field(None, min_length=1, max_length=65536)
    # an answer template (dlm extension): text locked in place, "<|mask|>" for each token the model writes
    template: str | None = Field(None, min_length=1, max_length=65536)

    @field_validator("policy", "cache")
    @classmethod
    def _known(cls, v, info):
        allowed = sorted(POLICIES) if info.field_name == "policy" else sorted(CACHES)
        if v is not None and v not in allowed:
            raise ValueError(f"unknown {info.field_name} {v!r}; allowed: {', '.join(allowed)}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v


class CompletionRequest(Settings):
    prompt: str | list[str]


class DenoiseRequest(Settings):
    prompt: str
    suffix: str | None = None  # infilling: the text after the generated span (diffusion models only)
    image: bool = False  # dlm extension: draw `prompt` (a caption); every frame carries the partial picture


# OpenAI's content parts, for the OpenAPI schema. The parts are checked by serve.images.parse_content, which names
# the exact field of a bad one (`messages[0].content[1].image_url.url`); pydantic's errors for a union of part
# models would name union members instead.
_TEXT_PART = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}  # fmt: skip
_IMAGE_PART = {
    "type": "object", "required": ["type", "image_url"], "additionalProperties": False,
    "properties": {"type": {"const": "image_url"}, "image_url": {
        "type": "object", "required": ["url"], "additionalProperties": False,
        "properties": {"url": {"type": "string", "description": "data:image/png;base64,... or data:image/jpeg;..."},
                       "detail": {"enum": ["auto", "low", "high"]}}}},
}  # fmt: skip
Content = Annotated[
    str | list[dict],
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [_TEXT_PART, _IMAGE_PART]}}]}),
]


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Content

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, v):
        if isinstance(v, str) or (isinstance(v, list) and all(isinstance(p, dict) for p in v)):
            return v
        raise ValueError("must be a string or a list of content parts ({type: text | image_url, ...})")


class ChatRequest(Settings):
    messages: list[Message] = Field(min_length=1)
    # OpenRouter's convention: ["image"] (or ["image", "text"]) asks for a picture of the last user message
    modalities: list[Literal["text", "image"]] | None = Field(None, min_length=1, max_length=2)

    @property
    def draws(self) -> bool:
        return bool(self.modalities) and "image" in self.modalities
