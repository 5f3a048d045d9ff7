"""The Triton backend: batches sent to a pool of Triton Inference Servers over gRPC (or HTTP).

One client per endpoint, opened at load and reused by every call (a gRPC channel multiplexes
them on one connection). Each call goes to the least-loaded endpoint that is up, round-robin
among equals. An endpoint is marked down after `failure_threshold` consecutive failures that
show it cannot serve (unreachable, shutting down, model not loaded there) or after one failed
health check; health checks probe it and mark it up again once it is ready and still serves the
signature the model was loaded with.

Retries: a call that failed that way is sent again to another endpoint that is up, at most
`retries` times and within the deadline. That includes calls that may already have reached
Triton (a connection reset mid-call), which is safe because this backend serves stateless models
only (no sequence batching, no sequence ids): running one twice costs compute, never a wrong
answer. Refusals (bad input, a model error) and timeouts are never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
import numpy as np
from tritonclient import grpc as grpcclient
from tritonclient import http as httpclient
from tritonclient.grpc import aio as grpc_aio
from tritonclient.http import aio as http_aio
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from service.backends.base import Backend, TensorSignature
from service.backends.triton_options import TritonOptions
from service.protocol.datatypes import V2_TO_NUMPY
from service.protocol.errors import (
    BackendError,
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    Overloaded,
    Unavailable,
)

logger = logging.getLogger(__name__)

# Triton prefixes some messages with the request id, which is empty for mlgate's requests.
_REQUEST_ID_PREFIX = re.compile(r"^\[request id: [^\]]*\] ")
# The Python backend appends the model's traceback; its last exception line says what failed.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception)\b.*")


class _EndpointDown(Unavailable):
    """This endpoint cannot serve the call now; another one may."""


def _triton_message(exc: InferenceServerException) -> str:
    """Triton's message on one line, without an empty request id or a Python traceback."""
    message = _REQUEST_ID_PREFIX.sub("", str(exc.message() or exc))
    head, traceback, tail = message.partition("Traceback (most recent call last):")
    if traceback:
        causes = [line for line in tail.splitlines() if _EXCEPTION_LINE.match(line)]
        message = head + (causes[-1] if causes else "")
    return " ".join(message.split())


def _grpc_error(exc: InferenceServerException) -> GatewayError:
    code = str(exc.status()).removeprefix("StatusCode.")
    message = f"Triton: {_triton_message(exc)}"
    # UNIMPLEMENTED is Triton's "unsupported" (a datatype, a parameter), which HTTP answers 400.
    if code in ("INVALID_ARGUMENT", "OUT_OF_RANGE", "UNIMPLEMENTED"):
        return InvalidInput(message)
    if code == "DEADLINE_EXCEEDED":
        return DeadlineExceeded(message)
    if code == "RESOURCE_EXHAUSTED":
        return Overloaded(message)
    # NOT_FOUND: mlgate knows the model, so this server has not loaded it; another may have.
    if code in ("UNAVAILABLE", "NOT_FOUND", "CANCELLED"):
        return _EndpointDown(message)
    return BackendError(message)


def _http_error(exc: InferenceServerException) -> GatewayError:
    status = str(exc.status())
    message = f"Triton: {_triton_message(exc)}"
    if status == "400":
        return InvalidInput(message)
    if status in ("408", "504"):
        return DeadlineExceeded(message)
    if status == "429":
        return Overloaded(message)
    if status in ("404", "502", "503"):
        return _EndpointDown(message)
    return BackendError(message)


class _Client(Protocol):
    """One endpoint's connection, in the V2 protocol's JSON vocabulary."""

    async def infer(
        self,
        model: tuple[str, str],
        inputs: dict[str, np.ndarray[Any, Any]],
        outputs: Sequence[str],
        timeout_s: float,
    ) -> dict[str, np.ndarray[Any, Any]]: ...

    async def model_ready(self, model: tuple[str, str], timeout_s: float) -> bool: ...

    async def metadata(self, model: tuple[str, str], timeout_s: float) -> dict[str, Any]: ...

    async def config(self, model: tuple[str, str], timeout_s: float) -> dict[str, Any]: ...

    async def close(self) -> None: ...


def _infer_inputs(inputs: dict[str, np.ndarray[Any, Any]], make: Any) -> list[Any]:
    """tritonclient InferInputs made by `make` (gRPC's or HTTP's), the arrays as raw bytes."""
    tensors = []
    for name, array in inputs.items():
        datatype = np_to_triton_dtype(array.dtype)
        if datatype is None:
            raise InvalidInput(f"input '{name}' has dtype {array.dtype}, which Triton cannot carry")
        tensor = make(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _answers(result: Any, outputs: Sequence[str]) -> dict[str, np.ndarray[Any, Any]]:
    answers = {}
    for name in outputs:
        array = result.as_numpy(name)
        if array is None:
            raise BackendError(f"Triton answered without output '{name}'")
        answers[name] = array
    return answers


class _GrpcClient:
    def __init__(self, address: str) -> None:
        self._client = grpc_aio.InferenceServerClient(
            address,
            channel_args=[
                # tritonclient's own limits; naming any channel argument replaces its defaults.
                ("grpc.max_send_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
                ("grpc.max_receive_message_length", grpcclient.MAX_GRPC_MESSAGE_SIZE),
                # gRPC waits up to two minutes before reconnecting to a server that went away;
                # health checks every second should see it back within a second or two.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )

    async def infer(
        self,
        model: tuple[str, str],
        inputs: dict[str, np.ndarray[Any, Any]],
        outputs: Sequence[str],
        timeout_s: float,
    ) -> dict[str, np.ndarray[Any, Any]]:
        try:
            tensors = _infer_inputs(inputs, grpcclient.InferInput)
            requested = [grpcclient.InferRequestedOutput(name) for name in outputs]
            result = await self._client.infer(
                model[0], tensors, model[1], requested, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            error = _grpc_error(exc)
            if isinstance(error, DeadlineExceeded):
                raise DeadlineExceeded(f"Triton did not answer within {timeout_s:.3f}s") from None
            raise error from None
        return _answers(result, outputs)

    async def model_ready(self, model: tuple[str, str], timeout_s: float) -> bool:
        try:
            return bool(await self._client.is_model_ready(*model, client_timeout=timeout_s))
        except InferenceServerException as exc:
            raise _grpc_error(exc) from None

    async def metadata(self, model: tuple[str, str], timeout_s: float) -> dict[str, Any]:
        try:
            found: dict[str, Any] = await self._client.get_model_metadata(
                *model, as_json=True, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            raise _grpc_error(exc) from None
        return found

    async def config(self, model: tuple[str, str], timeout_s: float) -> dict[str, Any]:
        try:
            found = await self._client.get_model_config(
                *model, as_json=True, client_timeout=timeout_s
            )
        except InferenceServerException as exc:
            raise _grpc_error(exc) from None
        config: dict[str, Any] = found["config"]
        return config

    async def close(self) -> None:
        await self._client.close()


class _HttpClient:
    def __init__(self, address: str) -> None:
        self._client = http_aio.InferenceServerClient(address)

    async def _call(self, timeout_s: float, call: Any, *args: Any, **kwargs: Any) -> Any:
        # The aio HTTP client has no per-call timeout of its own.
        try:
            async with asyncio.timeout(timeout_s):
                return await call(*args, **kwargs)
        except InferenceServerException as exc:
            raise _http_error(exc) from None
        except TimeoutError:
            raise DeadlineExceeded(f"Triton did not answer within {timeout_s:.3f}s") from None
        # Refused, reset or closed connections; aiohttp is what tritonclient's HTTP client uses.
        except (aiohttp.ClientError, OSError) as exc:
            raise _EndpointDown(f"Triton unreachable: {exc}") from None

    async def infer(
        self,
        model: tuple[str, str],
        inputs: dict[str, np.ndarray[Any, Any]],
        outputs: Sequence[str],
        timeout_s: float,
    ) -> dict[str, np.ndarray[Any, Any]]:
        try:
            tensors = _infer_inputs(inputs, httpclient.InferInput)
        except InferenceServerException as exc:
            raise _http_error(exc) from None
        requested = [httpclient.InferRequestedOutput(name, binary_data=True) for name in outputs]
        result = await self._call(
            timeout_s, self._client.infer, model[0], tensors, model[1], requested
        )
        return _answers(result, outputs)

    async def model_ready(self, model: tuple[str, str], timeout_s: float) -> bool:
        return bool(await self._call(timeout_s, self._client.is_model_ready, *model))

    async def metadata(self, model: tuple[str, str], timeout_s: float) -> dict[str, Any]:
        found: dict[str, Any] = await self._call(timeout_s, self._client.get_model_metadata, *model)
        return found

    async def config(self, model: tuple[str, str], timeout_s: float) -> dict[str, Any]:
        found: dict[str, Any] = await self._call(timeout_s, self._client.get_model_config, *model)
        return found

    async def close(self) -> None:
        await self._client.close()


@dataclass
class EndpointState:
    """One endpoint as the backend sees it."""

    address: str
    up: bool = True
    in_flight: int = 0
    consecutive_failures: int = 0
    served: int = 0  # calls it answered with outputs


# Compared by identity: two endpoints are never the same one.
@dataclass(eq=False)
class _Endpoint:
    client: _Client
    state: EndpointState
    last_error: str = ""


Signature = tuple[list[TensorSignature], list[TensorSignature]]


@dataclass(frozen=True)
class _Description:
    """What one endpoint says of the model."""

    signature: Signature
    max_batch_size: int
    device: str


def _signature(metadata: dict[str, Any]) -> Signature:
    # gRPC's JSON gives dimensions as strings ("-1"), HTTP's as numbers.
    def tensors(kind: str) -> list[TensorSignature]:
        return [
            TensorSignature(t["name"], t["datatype"], tuple(int(d) for d in t.get("shape", ())))
            for t in metadata.get(kind, ())
        ]

    return tensors("inputs"), tensors("outputs")


def _device(config: dict[str, Any]) -> str:
    kinds = {group.get("kind", "KIND_AUTO") for group in config.get("instance_group", ())}
    return "cuda" if "KIND_GPU" in kinds else "cpu"


class TritonBackend(Backend):
    """One model version served by a pool of Triton servers; build it with `open`."""

    def __init__(self, options: TritonOptions, model: str, version: str) -> None:
        self._options = options
        self._model = (model, version)
        self.target = f"Triton model '{model}' version {version}"
        make: type[_GrpcClient] | type[_HttpClient] = (
            _GrpcClient if options.protocol == "grpc" else _HttpClient
        )
        self._endpoints = [
            _Endpoint(make(address), EndpointState(address)) for address in options.endpoints
        ]
        self._signature: Signature = ([], [])
        self._output_names: list[str] = []
        self._device = "cpu"
        self._next = 0
        self._health: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, options: TritonOptions, model: str, version: str, max_batch_size: int
    ) -> TritonBackend:
        """Read the model's metadata from every endpoint and start health checks.

        BackendError when no endpoint serves the model, when endpoints disagree on its
        signature, or when Triton batches fewer rows than `max_batch_size` (mlgate's).
        Endpoints that do not answer start down and are probed like any other.
        """
        backend = cls(options, model, version)
        try:
            await backend._load(max_batch_size)
        except BaseException:
            await backend.close()
            raise
        backend._health = asyncio.create_task(backend._check_health_forever())
        return backend

    async def _load(self, max_batch_size: int) -> None:
        found = await asyncio.gather(
            *(self._describe(endpoint) for endpoint in self._endpoints), return_exceptions=True
        )
        described: dict[str, _Description] = {}
        for endpoint, result in zip(self._endpoints, found, strict=True):
            if isinstance(result, GatewayError):
                endpoint.state.up = False
                endpoint.last_error = result.message
                logger.warning(
                    "%s: endpoint %s starts down: %s",
                    self.target,
                    endpoint.state.address,
                    result.message,
                )
            elif isinstance(result, BaseException):
                raise result
            else:
                described[endpoint.state.address] = result
        if not described:
            raise BackendError(
                f"{self.target}: no endpoint serves it: "
                + "; ".join(f"{e.state.address}: {e.last_error}" for e in self._endpoints)
            )
        first, *others = described.items()
        signature = first[1].signature
        differ = [(a, d.signature) for a, d in others if d.signature != signature]
        if differ:
            raise BackendError(
                f"{self.target}: endpoints disagree on its inputs and outputs: "
                f"{first[0]} has {_describe_signature(signature)}, "
                + ", ".join(f"{a} has {_describe_signature(s)}" for a, s in differ)
            )
        small = [(a, d.max_batch_size) for a, d in described.items() if d.max_batch_size > 0]
        small = [(a, n) for a, n in small if n < max_batch_size]
        if small:
            raise BackendError(
                f"{self.target}: Triton's max_batch_size is "
                + ", ".join(f"{n} at {a}" for a, n in small)
                + f", below config.yaml max_batch_size {max_batch_size}: larger batches would fail"
            )
        self._signature = signature
        self._output_names = [spec.name for spec in signature[1]]
        self._device = first[1].device

    async def _describe(self, endpoint: _Endpoint) -> _Description:
        # One call after another so that a missing model is reported as such, not as unready.
        timeout = self._options.timeout_s
        metadata = await endpoint.client.metadata(self._model, timeout)
        if not await endpoint.client.model_ready(self._model, timeout):
            raise _EndpointDown("Triton: the model is not ready")
        config = await endpoint.client.config(self._model, timeout)
        return _Description(
            _signature(metadata), int(config.get("max_batch_size", 0)), _device(config)
        )

    @property
    def device(self) -> str:
        return self._device

    @property
    def ready(self) -> bool:
        return any(endpoint.state.up for endpoint in self._endpoints)

    @property
    def endpoints(self) -> list[EndpointState]:
        return [endpoint.state for endpoint in self._endpoints]

    def signature(self) -> Signature:
        return list(self._signature[0]), list(self._signature[1])

    async def infer(
        self,
        inputs: dict[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None = None,
        *,
        deadline: float | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        if self._closed:
            raise Unavailable("the model version has been unloaded")
        if outputs is None:
            names: Sequence[str] = self._output_names
        else:
            unknown = [name for name in outputs if name not in self._output_names]
            if unknown:
                raise InvalidInput(
                    f"unknown output '{unknown[0]}'; available: {', '.join(self._output_names)}"
                )
            names = outputs
        tried: list[_Endpoint] = []
        while True:
            endpoint = self._choose(tried)
            if endpoint is None:
                if tried:
                    raise Unavailable(tried[-1].last_error)
                raise Unavailable(f"{self.target}: no endpoint is up")
            timeout = self._time_left(deadline)
            state = endpoint.state
            state.in_flight += 1
            try:
                answers = await endpoint.client.infer(self._model, inputs, names, timeout)
            except _EndpointDown as exc:
                self._failed(endpoint, exc.message)
                tried.append(endpoint)
                if len(tried) > self._options.retries:
                    raise Unavailable(exc.message) from None
                continue
            except DeadlineExceeded:
                # Says nothing of the endpoint's health: the deadline may be the caller's.
                raise
            except GatewayError:
                # The endpoint answered, if only to refuse.
                state.consecutive_failures = 0
                raise
            finally:
                state.in_flight -= 1
            state.consecutive_failures = 0
            state.served += 1
            return answers

    def _choose(self, tried: list[_Endpoint]) -> _Endpoint | None:
        """The up endpoint with the fewest calls in flight; ties go round-robin."""
        candidates = [e for e in self._endpoints if e.state.up and e not in tried]
        if not candidates:
            return None
        start = self._next % len(candidates)
        self._next += 1
        ordered = candidates[start:] + candidates[:start]
        return min(ordered, key=lambda endpoint: endpoint.state.in_flight)

    def _time_left(self, deadline: float | None) -> float:
        if deadline is None:
            return self._options.timeout_s
        left = deadline - time.monotonic()
        if left <= 0:
            raise DeadlineExceeded("the deadline passed before Triton was called")
        return min(left, self._options.timeout_s)

    def _failed(self, endpoint: _Endpoint, message: str) -> None:
        endpoint.last_error = message
        state = endpoint.state
        state.consecutive_failures += 1
        if state.up and state.consecutive_failures >= self._options.failure_threshold:
            self._mark_down(endpoint, f"{state.consecutive_failures} failures in a row: {message}")

    def _mark_down(self, endpoint: _Endpoint, why: str) -> None:
        endpoint.state.up = False
        logger.warning("%s: endpoint %s down: %s", self.target, endpoint.state.address, why)

    async def _check_health_forever(self) -> None:
        while True:
            await asyncio.sleep(self._options.health_interval_s)
            await asyncio.gather(*(self._check_health(e) for e in self._endpoints))

    async def _check_health(self, endpoint: _Endpoint) -> None:
        """Mark an up endpoint down unless the model is ready there, a down one up if it is."""
        state = endpoint.state
        timeout = self._options.health_interval_s
        try:
            if state.up:
                if not await endpoint.client.model_ready(self._model, timeout):
                    self._mark_down(endpoint, "health check: the model is not ready")
                return
            signature = (await self._describe(endpoint)).signature
        # Anything a client raises is the endpoint failing its check: the loop must go on.
        except Exception as exc:
            message = exc.message if isinstance(exc, GatewayError) else repr(exc)
            endpoint.last_error = message
            if state.up:
                self._mark_down(endpoint, f"health check: {message}")
            return
        if signature != self._signature:
            logger.error(
                "%s: endpoint %s stays down: it now serves %s, not %s",
                self.target,
                state.address,
                _describe_signature(signature),
                _describe_signature(self._signature),
            )
            return
        state.up = True
        state.consecutive_failures = 0
        logger.info("%s: endpoint %s up", self.target, state.address)

    async def warmup(self) -> None:
        inputs = {
            spec.name: np.zeros(
                tuple(1 if dim < 0 else dim for dim in spec.shape), V2_TO_NUMPY[spec.datatype]
            )
            for spec in self._signature[0]
        }
        await self.infer(inputs)

    async def close(self) -> None:
        self._closed = True
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        for endpoint in self._endpoints:
            await endpoint.client.close()


def _describe_signature(signature: Signature) -> str:
    inputs, outputs = signature
    return " -> ".join(
        ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in tensors)
        for tensors in (inputs, outputs)
    )
