"""The fast path: OpenAI-shaped streams read below LiteLLM's per-chunk wrapper.

LiteLLM wraps every provider stream in its generic ``CustomStreamWrapper``
and sets up logging, cost and a ``stream_chunk_builder`` pass per call:
about 0.3-0.4 ms of CPU per chunk and 9 ms per call here, for chunks that,
from an OpenAI-compatible server, are already in the shape the proxy reads.
For those deployments this module keeps LiteLLM's Router for everything it
decides (which deployment, retries, fallbacks to other groups, cooldowns)
and LiteLLM's own code for the request body (``get_optional_params`` and the
provider's ``transform_request``) and for typed errors (``exception_type``),
but reads the provider's server-sent events itself, one ``json.loads`` per
chunk, and reports each outcome to the Router so cooldowns still judge the
deployment.

A call takes the fast path when every deployment it could reach (its group
and every group the Router's fallback lists name from there) is either

- ``openai/<model>`` (OpenAI, or any OpenAI-compatible ``api_base``: vLLM,
  Ollama's ``/v1``, OpenRouter, Groq...) with no ``litellm_params`` beyond
  ``api_base``, ``api_key``, ``organization``, ``timeout``,
  ``stream_timeout``, ``max_retries``, ``rpm`` and ``tpm``; or
- the offline model, streamed without LiteLLM's custom-provider wrapper.

Every other call (another provider prefix, a parameter only LiteLLM
understands, an alias or wildcard group) and every unary ``Chat`` takes
LiteLLM's full path (:class:`llmproxy.resilience.RouterUpstream`).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, cast

import httpx
import litellm
import openai
from litellm import exceptions as litellm_errors
from litellm.litellm_core_utils.exception_mapping_utils import exception_type
from litellm.llms.openai.common_utils import BaseOpenAILLM, OpenAIError
from litellm.router import Router
from litellm.types.utils import GenericStreamingChunk, LlmProviders
from litellm.utils import ProviderConfigManager, get_optional_params
from openai._base_client import make_request_options
from openai._constants import RAW_RESPONSE_HEADER
from openai._legacy_response import LegacyAPIResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from llmproxy.offline import PROVIDER as OFFLINE_PROVIDER
from llmproxy.offline import OfflineSettings, stream_reply
from llmproxy.resilience import NoFirstDelta, RouterUpstream
from llmproxy.router import fallback_groups, record_failure

_OPENAI_PARAMS = frozenset(
    {
        "model",
        "api_base",
        "api_key",
        "organization",
        "timeout",
        "stream_timeout",
        "max_retries",
        "rpm",
        "tpm",
    }
)
"""``litellm_params`` the fast path honours exactly as LiteLLM does; a
deployment with any other (set) parameter takes the full path."""

_REQUEST_PARAMS = ("tools", "tool_choice", "temperature", "max_tokens", "stream_options")
"""Request keywords (:func:`llmproxy.translate.chat_arguments`) sent on."""

_OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"

_OPTIONAL_PARAMS_KEPT = 256
"""Most parameter sets an OpenAI route keeps ``get_optional_params``' answer
for (a request's ``max_tokens`` and ``temperature`` may vary); past it the
route starts afresh."""

_TOOLS_STAND_IN: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "stand_in", "parameters": {"type": "object"}}}
]
"""What ``get_optional_params`` sees in place of a request's tools."""


class _ChunkSource(Protocol):
    """One opened provider stream: OpenAI chunks as decoded JSON."""

    def payloads(self) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class _Route(Protocol):
    """How to call one deployment directly."""

    async def open(
        self, messages: Sequence[Mapping[str, Any]], request: Mapping[str, Any]
    ) -> _ChunkSource: ...

    def litellm_error(self, exc: Exception) -> Exception: ...

    async def aclose(self) -> None: ...


class FastPathUpstream:
    """An :class:`llmproxy.resilience.Upstream`: the Router picks, retries and
    falls back; OpenAI-shaped streams are read directly (see the module doc).

    Safe to cancel: a cancelled stream closes its HTTP response. Call
    :meth:`aclose` once at shutdown (closes the per-deployment clients).
    """

    def __init__(self, router: Router) -> None:
        self._router = router
        self._full = RouterUpstream(router)
        self._routes: dict[str, _Route] = {}
        for deployment in router.get_model_list() or []:
            route = _route_for(router, deployment)
            if route is not None:
                self._routes[str(deployment["model_info"]["id"])] = route
        self._fast_groups: dict[str, bool] = {}

    def takes_fast_path(self, group: str) -> bool:
        """Whether a stream on ``group`` (and its fallbacks) goes the fast way."""
        known = self._fast_groups.get(group)
        if known is None:
            known = self._fast_groups[group] = self._reachable_all_fast(group)
        return known

    async def open(self, arguments: dict[str, Any]) -> Any:
        group = arguments["model"]
        if not self.takes_fast_path(group):
            return await self._full.open(arguments)
        kwargs = {
            **arguments,
            "stream": True,
            "stream_options": {"include_usage": True},
            "original_function": self._attempt,
        }
        # What Router.acompletion does before its fallback loop, minus the
        # streaming wrapper it returns.
        self._router._update_kwargs_before_fallbacks(model=group, kwargs=kwargs)
        return await self._router.async_function_with_fallbacks(**kwargs)

    async def complete(self, arguments: dict[str, Any]) -> Any:
        return await self._full.complete(arguments)

    def fallbacks(self, group: str) -> list[str]:
        return self._full.fallbacks(group)

    async def aclose(self) -> None:
        """Close every deployment's HTTP client; idempotent."""
        for route in self._routes.values():
            await route.aclose()

    async def _attempt(
        self, model: str, messages: list[dict[str, Any]], **kwargs: Any
    ) -> _FastStream:
        """One try on group ``model``, as the Router's retry loop calls it.

        Returns once the provider accepted the request (its status line);
        raises LiteLLM's typed exception otherwise, after counting it
        against the deployment (its cooldown).
        """
        router = self._router
        deployment = await router.async_get_available_deployment(
            model=model,
            messages=messages,
            specific_deployment=kwargs.pop("specific_deployment", None),
            request_kwargs=kwargs,
        )
        model_id = str(deployment["model_info"]["id"])
        route = self._routes[model_id]
        await router.async_routing_strategy_pre_call_checks(
            deployment=deployment, parent_otel_span=None
        )
        try:
            source = await route.open(messages, kwargs)
        except Exception as exc:
            error = route.litellm_error(exc)
            record_failure(router, model_id, model, error)
            router._set_deployment_num_retries_on_exception(error, deployment)
            raise error from exc
        return _FastStream(router, model, deployment, route, source)

    def _reachable_all_fast(self, group: str) -> bool:
        names = set(self._router.get_model_names())
        seen: set[str] = set()
        pending = [group]
        while pending:
            name = pending.pop()
            if name in seen:
                continue
            seen.add(name)
            if name not in names:
                return False  # an alias or a wildcard: LiteLLM resolves those
            deployments = self._router.get_model_list(model_name=name) or []
            if not all(str(d["model_info"]["id"]) in self._routes for d in deployments):
                return False
            pending.extend(fallback_groups(self._router, name))
            for lists in (
                self._router.context_window_fallbacks,
                self._router.content_policy_fallbacks,
            ):
                for entry in lists or ():
                    pending.extend(str(g) for g in entry.get(name, ()))
        return True


class _FastStream:
    """An :class:`llmproxy.resilience.UpstreamStream` over a direct provider
    stream; tells the Router how the deployment did when it ends."""

    def __init__(
        self,
        router: Router,
        group: str,
        deployment: Mapping[str, Any],
        route: _Route,
        source: _ChunkSource,
    ) -> None:
        self._router = router
        self._group = group
        self._deployment = deployment
        self._route = route
        self._source = source
        # The Router's retry/fallback wrappers stamp response headers here.
        self._hidden_params: dict[str, Any] = {}

    async def chunks(self) -> AsyncIterator[Any]:
        started = False
        try:
            async for payload in self._source.payloads():
                started = True
                yield payload
        except Exception as exc:
            error = self._route.litellm_error(exc)
            record_failure(self._router, self._model_id, self._group, error)
            if not started:
                # As LiteLLM's Router does inside its own stream wrapper.
                raise NoFirstDelta(f"{self._group}: {error}", cause=error) from exc
            raise error from exc
        self._router.sync_deployment_callback_on_success(
            kwargs={
                "litellm_params": {
                    "metadata": {"model_group": self._group},
                    "model_info": {"id": self._model_id},
                }
            },
            completion_response=None,
            start_time=None,
            end_time=None,
        )

    def model_info(self) -> Mapping[str, Any]:
        info: Mapping[str, Any] = self._deployment.get("model_info") or {}
        return info

    def answered_by(self) -> str | None:
        return str(self._deployment["litellm_params"]["model"])

    def record_no_first_delta(self, message: str) -> None:
        record_failure(
            self._router,
            self._model_id,
            self._group,
            litellm_errors.Timeout(message, model=self.answered_by() or "", llm_provider=""),
        )

    async def aclose(self) -> None:
        await self._source.aclose()

    @property
    def _model_id(self) -> str:
        return str(self._deployment["model_info"]["id"])


def _route_for(router: Router, deployment: Mapping[str, Any]) -> _Route | None:
    """The direct route to ``deployment``, or None when only LiteLLM's full
    path knows how to call it."""
    params: Mapping[str, Any] = deployment["litellm_params"]
    model = str(params["model"])
    if model.startswith(OFFLINE_PROVIDER + "/"):
        return _OfflineRoute(params)
    if not model.startswith("openai/") or litellm.headers:
        return None
    if any(v not in (None, False) for k, v in params.items() if k not in _OPENAI_PARAMS):
        return None
    api_key = params.get("api_key") or litellm.api_key or litellm.openai_key
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        return None  # LiteLLM's full path reports the missing key
    timeout = router._get_timeout(kwargs={"stream": True}, data=dict(params))
    return _OpenAIRoute(
        model=model.removeprefix("openai/"),
        client=openai.AsyncOpenAI(
            api_key=str(api_key),
            base_url=str(
                params.get("api_base")
                or litellm.api_base
                or os.environ.get("OPENAI_BASE_URL")
                or os.environ.get("OPENAI_API_BASE")
                or _OPENAI_DEFAULT_BASE
            ),
            organization=params.get("organization")
            or litellm.organization
            or os.environ.get("OPENAI_ORGANIZATION"),
            timeout=float(timeout or getattr(litellm, "request_timeout", None) or 600),
            max_retries=int(params.get("max_retries") or 0),
            # The HTTP client LiteLLM's own OpenAI handler uses: its aiohttp
            # transport unless LiteLLM is told otherwise (against httpx's
            # default transport, about half the CPU per chunk and three
            # quarters per call), with LiteLLM's SSL and proxy settings.
            http_client=BaseOpenAILLM.get_async_http_client(),
        ),
    )


@dataclass
class _OpenAIRoute:
    """An ``openai/`` deployment called with its own ``AsyncOpenAI`` client.

    The body is LiteLLM's (``get_optional_params`` and the OpenAI config's
    ``transform_request``), so both paths send the same request.
    """

    model: str
    client: openai.AsyncOpenAI
    _optional: dict[tuple[tuple[str, str], ...], dict[str, Any]] = field(default_factory=dict)
    """``get_optional_params``' answers by the request's parameters (see
    :meth:`_optional_params`)."""

    async def open(
        self, messages: Sequence[Mapping[str, Any]], request: Mapping[str, Any]
    ) -> _SseSource:
        optional = self._optional_params(request)
        config = ProviderConfigManager.get_provider_chat_config(self.model, LlmProviders.OPENAI)
        assert config is not None  # OpenAI always has one
        body = config.transform_request(self.model, list(messages), optional, {}, {})  # type: ignore[arg-type]
        # Posted as LiteLLM posts embeddings: past the SDK's TypedDict
        # transform of the body (0.7 ms of CPU for a short prompt; the body
        # is already plain JSON), with the SDK's auth, timeout and errors.
        options = make_request_options(
            extra_headers={RAW_RESPONSE_HEADER: "true"}, extra_body=body.pop("extra_body", None)
        )
        raw = await self.client.post(
            "/chat/completions",
            body=body,
            options=options,
            cast_to=ChatCompletion,
            stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )
        return _SseSource(cast(LegacyAPIResponse[Any], raw).http_response)

    def _optional_params(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """LiteLLM's ``get_optional_params`` for ``request`` (a fresh dict).

        It costs ~80 µs a call and answers the same for the same parameters:
        OpenAI's mapping passes the tools through untouched (or drops them
        all), so its answer is kept per model and parameters with a stand-in
        for the tools, which the request's own replace. (LiteLLM's own
        settings that it reads, such as ``drop_params``, are set at start-up.)
        """
        given = {key: request[key] for key in _REQUEST_PARAMS if key in request}
        tools = given.pop("tools", None)
        key = tuple((name, repr(value)) for name, value in given.items())
        if tools is not None:
            key += (("tools", ""),)
        kept = self._optional.get(key)
        if kept is None:
            if len(self._optional) >= _OPTIONAL_PARAMS_KEPT:
                self._optional.clear()
            if tools is not None:
                given["tools"] = _TOOLS_STAND_IN
            kept = self._optional[key] = get_optional_params(
                model=self.model, custom_llm_provider="openai", stream=True, **given
            )
        # A copy two levels deep: the request body is built from it and
        # its nested values (stream_options, extra_body) are flat dicts.
        optional = {k: dict(v) if isinstance(v, dict) else v for k, v in kept.items()}
        if optional.get("tools") is _TOOLS_STAND_IN:
            optional["tools"] = tools
        return optional

    def litellm_error(self, exc: Exception) -> Exception:
        return _litellm_error(exc, self.model)

    async def aclose(self) -> None:
        await self.client.close()


class _SseSource:
    """An OpenAI server-sent-event stream, decoded one ``data:`` line at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    async def payloads(self) -> AsyncIterator[dict[str, Any]]:
        done = False
        # Read to the end of the body even after [DONE]: only a response read
        # to its end gives its connection back to the pool.
        async for line in self._response.aiter_lines():
            if done or not line.startswith("data:"):
                continue  # blank separators, ": keep-alive" comments, event names
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                continue
            payload = json.loads(data)
            if isinstance(payload, dict) and payload.get("error"):
                # As the openai SDK's own stream does for an error event.
                error = payload["error"]
                message = error.get("message") if isinstance(error, dict) else None
                raise openai.APIError(
                    str(message or error), request=self._response.request, body=error
                )
            yield payload

    async def aclose(self) -> None:
        await self._response.aclose()


class _OfflineRoute:
    """The offline model, streamed without LiteLLM's custom-provider wrapper."""

    def __init__(self, params: Mapping[str, Any]) -> None:
        # Read once (build_router validated them), not per call.
        self._settings = OfflineSettings.from_params(params)

    async def open(
        self, messages: Sequence[Mapping[str, Any]], request: Mapping[str, Any]
    ) -> _OfflineSource:
        # As LiteLLM hands them over: the deployment's settings, the
        # request's max_tokens over the deployment's.
        settings = self._settings
        if request.get("max_tokens") is not None:
            settings = replace(settings, max_tokens=int(request["max_tokens"]))
        return _OfflineSource(stream_reply(messages, settings))

    def litellm_error(self, exc: Exception) -> Exception:
        return exc

    async def aclose(self) -> None:
        pass


class _OfflineSource:
    def __init__(self, chunks: AsyncIterator[GenericStreamingChunk]) -> None:
        self._chunks = chunks

    async def payloads(self) -> AsyncIterator[dict[str, Any]]:
        async for chunk in self._chunks:
            yield _openai_payload(chunk)

    async def aclose(self) -> None:
        close = getattr(self._chunks, "aclose", None)
        if close is not None:
            await close()


def _openai_payload(chunk: GenericStreamingChunk) -> dict[str, Any]:
    """LiteLLM's generic chunk as the OpenAI chunk a server would send."""
    delta: dict[str, Any] = {}
    if chunk["text"]:
        delta["content"] = chunk["text"]
    if chunk["tool_use"]:
        delta["tool_calls"] = [chunk["tool_use"]]
    payload: dict[str, Any] = {
        "choices": [{"index": 0, "delta": delta, "finish_reason": chunk["finish_reason"] or None}]
    }
    if chunk["usage"]:
        payload["usage"] = chunk["usage"]
    return payload


def _litellm_error(exc: Exception, model: str) -> Exception:
    """LiteLLM's typed exception for what calling ``model`` raised, mapped as
    its own OpenAI handler maps it (so both paths fail the same way)."""
    if isinstance(exc, tuple(litellm_errors.LITELLM_EXCEPTION_TYPES)):
        return exc
    if isinstance(exc, httpx.TimeoutException):
        exc = openai.APITimeoutError(request=_request_of(exc))
    elif isinstance(exc, httpx.HTTPError):
        exc = openai.APIConnectionError(message=str(exc), request=_request_of(exc))
    elif isinstance(exc, openai.APIStatusError):
        exc = OpenAIError(
            status_code=exc.status_code,
            message=str(exc),
            headers=exc.response.headers,
            body=exc.body if isinstance(exc.body, dict) else None,
        )
    try:
        mapped: Exception = exception_type(  # type: ignore[no-untyped-call]
            model=model, original_exception=exc, custom_llm_provider="openai"
        )
    except Exception as raised:  # exception_type raises what it maps
        mapped = raised
    return mapped


def _request_of(exc: httpx.HTTPError) -> httpx.Request:
    try:
        return exc.request
    except RuntimeError:  # raised before a request existed
        return httpx.Request("POST", "http://unknown")
