"""CharED as LangChain models: `CharEDLLM` (a `BaseLLM`) and `ChatCharED` (a `BaseChatModel`).

    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate
    llm = CharEDLLM(models=["smollm2", "gemma3-270m"], weights=[0.5, 0.5])
    chain = PromptTemplate.from_template("Q: {q}\\nA:") | llm | StrOutputParser()

Members are loaded lazily, on the first call, through `Member.load`, which shares loaded
weights process-wide: two instances naming the same model hold one copy. An `Ensemble`
is cheap (weights and names only), so one is built per call from the current fields; that
is what makes `configurable_fields(weights=..., temperature=...)` and concurrent `batch`
calls safe: nothing mutable is shared between calls.

This is the only module that imports langchain_core.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Iterator, Sequence

from chared_flows.errors import ConfigError, ContextWindowError, MissingExtraError

try:
    from langchain_core.callbacks import (
        AsyncCallbackManagerForLLMRun,
        CallbackManagerForLLMRun,
    )
    from langchain_core.language_models import BaseChatModel, BaseLLM
    from langchain_core.language_models.base import LangSmithParams
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
    from langchain_core.messages.ai import UsageMetadata
    from langchain_core.outputs import (
        ChatGeneration,
        ChatGenerationChunk,
        ChatResult,
        Generation,
        GenerationChunk,
        LLMResult,
    )
    from langchain_core.runnables.config import get_config_list, run_in_executor
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("langchain_core", "langchain") from exc

from pydantic import ConfigDict, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo

from chared_flows.decoding import generation_info, pin_problem, pinned_arguments
from chared_flows.decoding.config import CALL_FIELDS, DecodeConfig, DecodeFields

DEFAULT_MODELS = ["smollm2", "gemma3-270m"]
# Call-time keyword arguments that override a field for one call (llm.invoke(p, temperature=0.7)).
CALL_OVERRIDES = tuple(f for f in CALL_FIELDS if f != "stop")


def _build_ensemble(members: list[Any], config: DecodeConfig) -> Any:
    """One Ensemble per call (cheap). Tests without torch models may replace this function."""
    from chared_flows.decoding import Ensemble

    return Ensemble(members, config)


def _load_member(spec: str, chat: bool, device: str = "cpu", backend: str | None = None) -> Any:
    from chared_flows.decoding import Member

    return Member.load(spec, chat=chat, device=device, backend=backend)


def merge_stops(configured: Sequence[str] | None, call: Sequence[str] | None) -> list[str] | None:
    """Configured stops first, then the call's, without duplicates; None when there are none."""
    merged: list[str] = []
    for s in [*(configured or []), *(call or [])]:
        if s not in merged:
            merged.append(s)
    return merged or None


class CharEDParams(DecodeFields):
    """Every parameter that changes CharED's output; shared by the LLM and the chat model.

    The decoding fields (weights, mode, rule, max_new_chars, temperature, top_p, seed,
    stop, beam_width, prune_threshold, token_healing) are inherited from the engine's
    `DecodeFields`, so they carry the engine's own types, ranges and descriptions; the
    combination is checked by building the engine's `DecodeConfig` when the model is built.
    """

    models: list[str] = Field(
        default_factory=lambda: list(DEFAULT_MODELS),
        min_length=1,
        description="member specs: 'smollm2', 'gemma3-270m', a local HF dir, a hub id or a .gguf path",
    )
    chat: bool | None = Field(
        default=None,
        description="render the prompt with each member's chat template (None: False, or keep the "
        "setting of preloaded members)",
    )
    device: str = Field(
        default="cpu",
        description="where the members' models run: cpu, cuda, cuda:N, mps or auto (Member.load's device)",
    )
    backends: list[str] | None = Field(
        default=None,
        description="the backend each member runs on (transformers, llama_cpp, served); from_registry sets "
        "what the combination pinned; None: each machine's own choice (decoding/backends/auto.py)",
    )
    # Set by from_registry: where the combination came from, e.g. "models:/NAME@champion (version 3)".
    registry_source: str | None = Field(default=None, description="the registry version this model was loaded from")
    # Already loaded Member objects, used instead of loading `models` (tests, custom models).
    # Excluded from serialisation; their names replace `models` in the identifying params.
    preloaded_members: list[Any] | None = Field(default=None, exclude=True, repr=False)

    @model_validator(mode="after")
    def _config_valid(self) -> "CharEDParams":
        self.decode_config()  # the engine's own checks, so a bad value fails when the model is built
        names = self.member_names()
        if self.weights is not None and len(self.weights) != len(names):
            raise ValueError(
                f"{len(self.weights)} weights for {len(names)} members ({', '.join(names)}); "
                "give exactly one weight per member"
            )
        problem = None if self.backends is None else pin_problem(names, self.backends)
        if problem:
            raise ValueError(problem)
        return self

    @classmethod
    def from_registry(cls, uri: str, *, tracking_uri: str | None = None, **overrides: Any):
        """The combination registered at `uri` (models:/NAME@ALIAS or models:/NAME/N) as this model.

        Its members, weights and decoding come from the registry; each member's files are checked
        against the fingerprints recorded at promotion (a changed member is refused). `overrides`
        set other fields (e.g. device, or per-call defaults such as max_new_chars).
        """
        from chared_flows.combinations.registry import load_combination

        registered = load_combination(uri, tracking_uri)
        combo = registered.combination
        combo.verify(where=registered.where)
        fields = {k: list(v) if isinstance(v, tuple) else v for k, v in combo.decoding.model_dump().items()}
        fields = {**fields, "models": list(combo.members), "chat": combo.chat, "registry_source": registered.where,
                  "backends": combo.backends}
        # subtle: ChatCharED takes max_new_chars only under its alias max_tokens
        fields = {(cls.model_fields[k].alias or k): v for k, v in fields.items()}
        return cls(**{**fields, **overrides})

    def decode_config(self) -> DecodeConfig:
        return DecodeConfig.build(**{name: getattr(self, name) for name in DecodeFields.model_fields})

    # --- what a call decodes with ---------------------------------------

    def member_names(self) -> list[str]:
        if self.preloaded_members is not None:
            return [m.name for m in self.preloaded_members]
        return list(self.models)

    def identifying_params(self) -> dict[str, Any]:
        config = self.decode_config().model_dump()
        config["weights"] = None if config["weights"] is None else list(config["weights"])
        config["stop"] = list(config["stop"]) or None
        pinned = {} if self.backends is None else {"backends": list(self.backends)}
        return {"models": self.member_names(), "chat": bool(self.chat), **pinned, **config}

    def ensemble(self) -> Any:
        return _build_ensemble(self._members(), self.decode_config())

    def tokenizer_families(self) -> list[str]:
        """Each member's tokenizer family, e.g. ["byte_level", "sentencepiece"] (loads them)."""
        return [str(m.family) for m in self._members()]

    def loaded_members(self) -> list[Any]:
        """The Member objects this model decodes with (loads them on first use)."""
        return self._members()

    def get_token_ids(self, text: str) -> list[int]:
        """Token ids of `text` under the first member's own tokenizer (loads the members).

        subtle: LangChain's default counts with GPT-2's tokenizer, which it downloads from
        the hub; offline that gives 0. An ensemble has one tokenization per member; the
        first member's is the one counted here (`usage_metadata` reports every member's).
        """
        return list(self._members()[0].encode(text, add_special_tokens=False))

    def _members(self) -> list[Any]:
        if self.preloaded_members is not None:
            if self.chat is None:
                return list(self.preloaded_members)
            return [m.with_chat(self.chat) for m in self.preloaded_members]
        backends = pinned_arguments(self.models, self.backends, self.registry_source or "this model")
        return [_load_member(spec, bool(self.chat), device=self.device, backend=backend)
                for spec, backend in zip(self.models, backends)]

    def decode_kwargs(self, stop: Sequence[str] | None, call_kwargs: dict[str, Any]) -> dict[str, Any]:
        """Keyword arguments for Ensemble.generate/stream: fields, then per-call overrides."""
        unknown = sorted(k for k in call_kwargs if k not in CALL_OVERRIDES and not k.startswith("ls_"))
        if unknown:
            raise ConfigError(
                f"unknown call-time option(s) {', '.join(unknown)}; per call you may set: "
                f"{', '.join(CALL_OVERRIDES)} and stop"
            )
        out = {name: getattr(self, name) for name in CALL_OVERRIDES}
        out["stop"] = merge_stops(self.stop, stop)
        out.update({k: v for k, v in call_kwargs.items() if k in CALL_OVERRIDES})
        return out


_INPUT_ERRORS = (ConfigError, ContextWindowError)  # raised before any decoding: safe to rerun alone


def usage_metadata(info: dict[str, Any]) -> UsageMetadata:
    """LangChain's token usage for one call: every member's tokens, summed.

    Each member reads the prompt and writes the output in its own tokenization, so the
    ensemble's cost is the sum over members; the per-member counts go into
    `response_metadata["token_usage"]`.
    """
    inputs = sum(int(v) for v in (info.get("prompt_tokens") or {}).values())
    outputs = sum(int(v) for v in (info.get("output_tokens") or {}).values())
    return UsageMetadata(input_tokens=inputs, output_tokens=outputs, total_tokens=inputs + outputs)


def token_usage(info: dict[str, Any]) -> dict[str, dict[str, int]]:
    """member name -> {"input_tokens", "output_tokens"}, for response_metadata."""
    prompt, output = info.get("prompt_tokens") or {}, info.get("output_tokens") or {}
    return {
        name: {"input_tokens": int(prompt.get(name, 0)), "output_tokens": int(output.get(name, 0))}
        for name in dict.fromkeys([*prompt, *output])
    }


def stream_text(
    params: CharEDParams, prompt: str | list[dict[str, str]], stop: Sequence[str] | None, call_kwargs: dict[str, Any]
) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """Yield (chunk, None) as text is decided, then ("", generation_info) once at the end.

    The engine holds back text that may begin a stop string and never streams a matched
    stop, so the chunks join to exactly what `generate` returns.
    """
    kwargs = params.decode_kwargs(stop, call_kwargs)
    streaming = params.ensemble().start_stream(prompt, **kwargs)
    for chunk in streaming:
        if chunk:
            yield chunk, None
    yield "", generation_info(streaming.result)


class CharEDLLM(CharEDParams, BaseLLM):
    """Character-wise ensemble decoding of several causal LMs, as a LangChain LLM."""

    # subtle: extra="forbid" so CharEDLLM(wieghts=...) fails instead of silently decoding
    # with uniform weights; BaseLLM's own config would otherwise ignore unknown keys.
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    @property
    def _llm_type(self) -> str:
        return "chared"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.identifying_params()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "chared"
        params["ls_model_name"] = kwargs.get("model", "+".join(self.member_names()))
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get("max_new_chars", self.max_new_chars)
        return params

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        if len(prompts) == 1 and run_manager is not None and run_manager.handlers:
            # someone listens for tokens: decode through the stream so they see each chunk
            text, info = self._collect(self._stream(prompts[0], stop, run_manager, **kwargs))
            return LLMResult(generations=[[Generation(text=text, generation_info=info)]],
                             llm_output={"model": self.member_names()})
        # Several prompts (LangChain's `batch`): decoded together, their passes batched.
        results = self.ensemble().generate_batch(prompts, **self.decode_kwargs(stop, kwargs))
        generations = [[Generation(text=r.text, generation_info=generation_info(r))] for r in results]
        return LLMResult(generations=generations, llm_output={"model": self.member_names()})

    def complete(self, prompt: str) -> tuple[str, dict[str, Any]]:
        """(text, generation_info) of one prompt, through LangChain's callbacks: the shape the
        workflow runner calls (flow/llm.py), so a CharEDLLM can serve as a run's `llm_factory`."""
        generation = self.generate([prompt]).generations[0][0]
        return generation.text, dict(generation.generation_info or {})

    # subtle: BaseLLM.batch decodes a chunk of inputs with one generate() call, and
    # generate_batch checks every prompt before decoding any, so one bad prompt turned the
    # valid prompts of its chunk into its error even with return_exceptions=True. Each input
    # is checked first; a chunk that still fails on an input error (a prompt too long for a
    # member: known once members tokenize it) is rerun one input at a time.
    def batch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
              **kwargs: Any) -> list[Any]:
        if not return_exceptions or len(inputs) < 2:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        out: list[Any] = [self._input_problem(i) for i in inputs]
        todo = [k for k, problem in enumerate(out) if problem is None]
        run = lambda ks: super(CharEDLLM, self).batch(  # noqa: E731
            [inputs[k] for k in ks], [configs[k] for k in ks], return_exceptions=True, **kwargs)
        for k, result in zip(todo, run(todo) if todo else []):
            out[k] = result
        again = [k for k in todo if isinstance(out[k], _INPUT_ERRORS)] if len(todo) > 1 else []
        for k in again:
            out[k] = run([k])[0]
        return out

    async def abatch(self, inputs: list[Any], config: Any = None, *, return_exceptions: bool = False,
                     **kwargs: Any) -> list[Any]:
        if not return_exceptions or len(inputs) < 2:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        configs = get_config_list(config, len(inputs))
        out: list[Any] = [self._input_problem(i) for i in inputs]
        todo = [k for k, problem in enumerate(out) if problem is None]
        if todo:
            done = await super().abatch([inputs[k] for k in todo], [configs[k] for k in todo],
                                        return_exceptions=True, **kwargs)
            for k, result in zip(todo, done):
                out[k] = result
        for k in [k for k in todo if isinstance(out[k], _INPUT_ERRORS)] if len(todo) > 1 else []:
            out[k] = (await super().abatch([inputs[k]], [configs[k]], return_exceptions=True, **kwargs))[0]
        return out

    def _input_problem(self, value: Any) -> Exception | None:
        """The error invoke() would raise for this input before decoding, or None."""
        from chared_flows.decoding import check_prompt

        try:
            check_prompt(self._convert_input(value).to_string())
        except (ValueError, TypeError) as exc:  # ConfigError, or LangChain's "Invalid input type"
            return exc
        return None

    @staticmethod
    def _collect(chunks: Iterator[GenerationChunk]) -> tuple[str, dict[str, Any] | None]:
        text, info = [], None
        for chunk in chunks:
            text.append(chunk.text)
            info = chunk.generation_info or info
        return "".join(text), info

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for text, info in stream_text(self, prompt, stop, kwargs):
            chunk = GenerationChunk(text=text, generation_info=info)
            if run_manager is not None and text:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        # Decoding is CPU-bound torch work: each step runs in a worker thread so the event
        # loop stays free; the callback is awaited on the loop, not from the worker.
        iterator = stream_text(self, prompt, stop, kwargs)
        done = object()
        while True:
            item = await run_in_executor(None, next, iterator, done)
            if item is done:
                break
            text, info = item
            chunk = GenerationChunk(text=text, generation_info=info)
            if run_manager is not None and text:
                await run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk


# --- chat --------------------------------------------------------------------


# LangChain message type -> the engine's chat role.
_ROLES = {"system": "system", "human": "user", "ai": "assistant"}


def messages_to_chat(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as the engine's [{"role", "content"}] list.

    Each member renders the list with its own chat template (a model without one gets a
    plain "Role: content" transcript), so a multi-turn conversation reaches every member
    in the format it was trained on. Tool calls and tool results have no rendering in
    these templates and are refused rather than silently dropped.
    """
    out = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message.type)
        if role is None:
            raise ConfigError(
                f"message {i} is a {message.type!r} message; ChatCharED takes system, human and ai "
                "messages (no tool calling)"
            )
        if role == "assistant" and getattr(message, "tool_calls", None):
            raise ConfigError(f"message {i} is an ai message with tool calls; ChatCharED has no tool calling")
        out.append({"role": role, "content": message.text})
    if not any(m["role"] == "user" for m in out):
        raise ConfigError("ChatCharED needs at least one user (human) message")
    return out


class ChatCharED(CharEDParams, BaseChatModel):
    """CharED as a chat model: each member renders the conversation with its own chat template."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, populate_by_name=True)

    chat: bool | None = True
    # LangChain's standard chat-model parameters. `max_tokens` is an alias of
    # max_new_chars: CharED counts characters, there is no single tokenizer to count in.
    # The field is the engine's (default, bounds, description), with the alias added.
    max_new_chars: int = FieldInfo.merge_field_infos(DecodeFields.model_fields["max_new_chars"], Field(alias="max_tokens"))
    timeout: float | None = Field(default=None, gt=0, description="seconds; decoding stops there (finish_reason 'timeout')")
    max_retries: int = Field(default=0, ge=0, description="accepted for compatibility: local decoding has nothing to retry")
    # subtle: accepted and ignored, like max_retries: LangChain's standard chat-model tests (and
    # code written for hosted models) pass an API key to every model; local decoding needs none.
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False,
                                      description="accepted for compatibility and ignored: local decoding needs no key")
    streaming: bool = False

    def as_llm(self) -> CharEDLLM:
        """The equivalent CharEDLLM (same members, weights and decoding parameters)."""
        fields = {name: getattr(self, name) for name in CharEDParams.model_fields}
        return CharEDLLM(**fields)

    @property
    def _llm_type(self) -> str:
        return "chared-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self.identifying_params()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="chared",
            ls_model_name=kwargs.get("model", "+".join(self.member_names())),
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_new_chars", self.max_new_chars),
        )
        stops = merge_stops(self.stop, stop)
        if stops:
            params["ls_stop"] = stops
        return params

    def _chunks(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]):
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        for text, info in stream_text(self, messages_to_chat(messages), stop, kwargs):
            if deadline is not None and info is None and time.monotonic() > deadline:
                yield text, {"finish_reason": "timeout"}
                return
            yield text, info

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        text, info = [], {}
        for piece, piece_info in self._chunks(messages, stop, kwargs):
            text.append(piece)
            info = piece_info or info
        message = AIMessage(
            content="".join(text), response_metadata=self._response_metadata(info),
            usage_metadata=usage_metadata(info),
        )
        return ChatResult(generations=[ChatGeneration(message=message, generation_info=info)])

    def _response_metadata(self, info: dict[str, Any]) -> dict[str, Any]:
        return {"model_name": "+".join(self.member_names()), **info, "token_usage": token_usage(info)}

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for text, info in self._chunks(messages, stop, kwargs):
            # Only the last chunk carries usage and model name: chunks are summed when joined.
            if info is None:
                message = AIMessageChunk(content=text)
            else:
                message = AIMessageChunk(content=text, response_metadata=self._response_metadata(info),
                                         usage_metadata=usage_metadata(info))
            chunk = ChatGenerationChunk(message=message)
            if run_manager is not None and text:
                run_manager.on_llm_new_token(text, chunk=chunk)
            yield chunk
