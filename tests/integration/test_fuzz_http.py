"""Hostile HTTP input, generated: every inference, feature and admin route of the real app on
a seeded redis-server answers every request, never with a 5xx, always in the V2 error shape,
and never with a traceback, a path, the store's URL or a Redis key.

The anonymous /openapi.json drives schemathesis (valid and schema-violating requests for each
of its operations, path parameters free and pinned to the served models); near-valid bodies of
our own reach past the first check of the codecs; the admin API, which that document hides, is
fuzzed from strategies of our own, with the right token, a wrong one, or none. Requests go in
process through httpx.ASGITransport (the whole ASGI stack, no sockets), a few at a time.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import schemathesis
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.integration.fuzz_support import (
    ADMIN_TOKEN,
    ANSWER_TIMEOUT_S,
    DATATYPES,
    INFERENCE_TOKEN,
    MODELS,
    Gateway,
    authorizations,
    draw_many,
    gateway,
    inference_token_file,
    json_values,
    leaks,
    names,
)

# Per schemathesis operation and generation mode; 20 operations. One without a body takes only
# a model and version name (a lookup, the same in each), so fewer examples cover it.
SCHEMA_EXAMPLES = 40
BODILESS_EXAMPLES = 10
PINNED_EXAMPLES = 20
OWN_EXAMPLES = 250
ADMIN_EXAMPLES = 400
# Per strategy, with inference tokens required: the token check and what lies past it.
TOKEN_EXAMPLES = 150
MIN_REQUESTS = 2000
CONCURRENCY = 8
INFERENCE_PATHS = ("/infer", ":predict")
FEATURES = ["txn_stats.txn_count_1h", "user_profile.kyc_level", "txn_stats.amount_sum_1h"]


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    params: Any = None
    content: bytes | None = None

    @property
    def timed(self) -> bool:
        """The client set a deadline, so a 504 is a fair answer."""
        text = (self.content or b"").decode(errors="replace")
        return "x-mlgate-timeout-ms" in {k.lower() for k in self.headers} or "timeout" in text

    def describe(self) -> str:
        body = (self.content or b"")[:300]
        return f"{self.method} {self.url} params={self.params} headers={self.headers} {body!r}"


# ---- schemathesis over /openapi.json ------------------------------------------------------


def schema_calls(doc: dict[str, Any]) -> list[Call]:
    schema = schemathesis.openapi.from_dict(doc)
    calls: list[Call] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        path_names = {p.name for p in operation.path_parameters}
        pinned = {"model": "fraud_mlp", "version": "2", "view_name": "txn_stats"}
        for mode in GenerationMode:
            # A path parameter is a string in any URL: schemathesis finds no violation of one
            # after seconds of search, so only a body, query or header can be violated.
            violable = operation.body or operation.query or operation.headers
            if mode is GenerationMode.NEGATIVE and not violable:
                continue
            examples = SCHEMA_EXAMPLES if operation.body else BODILESS_EXAMPLES
            strategies = [(operation.as_strategy(generation_mode=mode), examples)]
            if path_names:
                known = {k: v for k, v in pinned.items() if k in path_names}
                strategies.append(
                    (
                        operation.as_strategy(generation_mode=mode, path_parameters=known),
                        PINNED_EXAMPLES,
                    )
                )
            for strategy, count in strategies:
                calls += [case_call(case) for case in draw_many(strategy, count)]
    return calls


def case_call(case: Any) -> Call:
    kwargs = case.as_transport_kwargs(base_url="http://gw")
    content = kwargs.get("content")
    if "json" in kwargs:
        content = json.dumps(kwargs["json"]).encode()
    elif isinstance(kwargs.get("data"), str):
        content = kwargs["data"].encode()
    elif isinstance(kwargs.get("data"), bytes):
        content = kwargs["data"]
    headers = {k: str(v) for k, v in (kwargs.get("headers") or {}).items()}
    return Call(kwargs["method"], kwargs["url"], headers, kwargs.get("params"), content)


# ---- near-valid bodies of our own ---------------------------------------------------------

shapes = st.lists(
    st.integers(min_value=-2, max_value=70) | st.sampled_from([2**40, 2**63, True]), max_size=3
)
tensor_data = st.lists(
    st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(2**65), max_value=2**65)
    | st.text(max_size=4)
    | st.booleans()
    | st.none()
    | st.lists(st.floats(width=32), max_size=33),
    max_size=40,
)
parameters = st.dictionaries(
    st.sampled_from(["timeout", "priority", "binary_data_output", "version", "x"]),
    json_values(4),
    max_size=3,
)


@st.composite
def infer_calls(draw: st.DrawFn) -> Call:
    tensor: dict[str, Any] = {
        "name": draw(names(["features", "x"])),
        "datatype": draw(names(DATATYPES)),
        "shape": draw(shapes),
    }
    binary = b""
    if draw(st.booleans()):
        tensor["data"] = draw(tensor_data)
    else:
        binary = draw(st.binary(max_size=300))
        tensor["parameters"] = {"binary_data_size": draw(st.integers(-1, 400) | json_values(2))}
    doc: dict[str, Any] = {"inputs": draw(st.lists(st.just(tensor), max_size=2))}
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters)
    if draw(st.booleans()):
        doc["outputs"] = [{"name": draw(names(["probability"])), "parameters": draw(parameters)}]
    if draw(st.booleans()):
        doc["id"] = draw(json_values(1))
    header = json.dumps(doc).encode()
    headers = {}
    if binary or draw(st.booleans()):
        length = draw(st.sampled_from([len(header), len(header) + 1, -1, 10**20]))
        headers["Inference-Header-Content-Length"] = str(length)
    version = draw(st.sampled_from(["", "/versions/1", "/versions/2", "/versions/9"]))
    model = draw(names(MODELS))
    return Call(
        "POST", f"/v2/models/{quote(model, safe='')}{version}/infer", headers, None, header + binary
    )


@st.composite
def predict_calls(draw: st.DrawFn) -> Call:
    entity = st.sampled_from(["u0", "u1", "u4", "nobody"]) | st.text(max_size=8) | json_values(1)
    doc: dict[str, Any] = {"entities": draw(st.lists(entity, max_size=6) | json_values(2))}
    if draw(st.booleans()):
        doc["features"] = draw(
            st.dictionaries(names(FEATURES), json_values(3) | st.floats(), max_size=2)
        )
    if draw(st.booleans()):
        doc["parameters"] = draw(parameters)
    if draw(st.booleans()):
        doc["request_id"] = draw(json_values(1))
    headers = draw(
        st.dictionaries(
            st.sampled_from(["x-request-id", "x-mlgate-timeout-ms", "x-model-version"]),
            st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=10),
            max_size=2,
        )
    )
    model = draw(names(MODELS))
    return Call(
        "POST",
        f"/v1/models/{quote(model, safe='')}:predict",
        headers,
        None,
        json.dumps(doc).encode(),
    )


@st.composite
def push_calls(draw: st.DrawFn) -> Call:
    value = st.floats() | st.integers(min_value=-(2**70), max_value=2**70) | json_values(1)
    row = st.fixed_dictionaries(
        {"user_id": st.sampled_from(["u1", "fresh"]) | json_values(1)},
        optional={f.split(".")[1]: value for f in FEATURES},
    )
    doc: dict[str, Any] = {"rows": draw(st.lists(row, max_size=3) | json_values(2))}
    if draw(st.booleans()):
        doc["event_time_ms"] = draw(
            st.integers(min_value=-(2**70), max_value=2**70) | json_values(1)
        )
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"} if draw(st.booleans()) else {}
    view = draw(names(["txn_stats", "user_profile"]))
    return Call(
        "POST", f"/v1/features/{quote(view, safe='')}", headers, None, json.dumps(doc).encode()
    )


# ---- the admin API ------------------------------------------------------------------------

ADMIN_ROUTES = [
    ("GET", "/admin/models"),
    ("GET", "/admin/models/{model}"),
    ("PUT", "/admin/models/{model}/routing"),
    ("PATCH", "/admin/models/{model}/routing"),
    ("POST", "/admin/models/{model}/promote"),
    ("POST", "/admin/models/{model}/rollback"),
    ("POST", "/admin/models/{model}/versions/{version}/{action}"),
]
routing_sections = st.fixed_dictionaries(
    {},
    optional={
        "canary": st.fixed_dictionaries(
            {"version": names(["1", "2"]) | json_values(1), "weight": st.floats() | json_values(1)}
        ),
        "rollback": json_values(4),
        "shadow": json_values(4),
        "stable": names(["1", "2"]),
    },
)


@st.composite
def admin_calls(draw: st.DrawFn) -> Call:
    method, template = draw(st.sampled_from(ADMIN_ROUTES))
    path = template.format(
        model=quote(draw(names(MODELS)), safe=""),
        version=quote(draw(names(["1", "2", "3"])), safe=""),
        action=quote(draw(names(["load", "unload", "reload"])), safe=""),
    )
    authorization = draw(authorizations(ADMIN_TOKEN))
    headers = {"authorization": authorization} if authorization else {}
    body = draw(
        st.none()
        | routing_sections.map(lambda d: json.dumps(d).encode())
        | st.fixed_dictionaries(
            {}, optional={"version": json_values(1), "reason": json_values(1)}
        ).map(lambda d: json.dumps(d).encode())
        | json_values().map(lambda d: json.dumps(d).encode())
        | st.binary(max_size=40)
    )
    return Call(method, path, headers, None, body)


@st.composite
def with_inference_token(draw: st.DrawFn, calls: st.SearchStrategy[Call]) -> Call:
    call = draw(calls)
    authorization = draw(authorizations(INFERENCE_TOKEN))
    if not authorization:
        return call
    return replace(call, headers={**call.headers, "authorization": authorization})


# ---- sending and checking -----------------------------------------------------------------


async def send(client: httpx.AsyncClient, call: Call) -> httpx.Response | None:
    """The answer to `call`, or None when httpx itself cannot build the request (a header
    value it cannot encode): such a request never leaves the client."""
    try:
        request = client.build_request(
            call.method, call.url, headers=call.headers, params=call.params, content=call.content
        )
    except (UnicodeEncodeError, httpx.InvalidURL, ValueError, TypeError):
        return None
    return await asyncio.wait_for(client.send(request), ANSWER_TIMEOUT_S)


def problems(call: Call, response: httpx.Response, store_url: str) -> list[str]:
    found: list[str] = []
    status = response.status_code
    if status >= 500 and not (status == 504 and call.timed):
        found.append(f"status {status}")
    try:
        body = response.json()
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not 200 <= status < 300 and not (set(body or ()) == {"error"} and isinstance(error, str)):
        found.append(f"not the V2 error shape: {response.text[:200]!r}")
    # The message as the client reads it: JSON escapes the quotes of 'File "'.
    said = f"{response.text}\n{error}" if isinstance(error, str) else response.text
    leaked = leaks(said, call.describe(), store_url)
    if leaked:
        found.append(f"leaks {leaked}: {response.text[:300]!r}")
    return found


async def fuzz(gw: Gateway, calls: list[Call]) -> tuple[Counter[int], list[str]]:
    """The statuses of the answers to `calls`, and what was wrong with them."""
    transport = httpx.ASGITransport(app=gw.app, raise_app_exceptions=False)
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(client: httpx.AsyncClient, call: Call) -> None:
        async with gate:
            try:
                response = await send(client, call)
            except TimeoutError:
                failures.append(f"no answer in {ANSWER_TIMEOUT_S}s: {call.describe()}")
                return
            if response is None:
                return
            statuses[response.status_code] += 1
            failures.extend(
                f"{p}\n  <- {call.describe()}" for p in problems(call, response, gw.store_url)
            )

    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        await asyncio.gather(*(one(client, call) for call in calls))
    return statuses, failures


async def test_generated_http_requests_never_get_a_5xx_a_stray_shape_or_a_leak(
    redis_url: str,
) -> None:
    async with gateway(redis_url) as gw:
        calls = schema_calls(gw.app.openapi())
        for strategy, count in (
            (infer_calls(), OWN_EXAMPLES),
            (predict_calls(), OWN_EXAMPLES),
            (push_calls(), OWN_EXAMPLES),
            (admin_calls(), ADMIN_EXAMPLES),
        ):
            calls += draw_many(strategy, count)
        statuses, failures = await fuzz(gw, calls)
    sent = statuses.total()
    assert not failures, f"{len(failures)} of {sent} answers failed:\n" + "\n".join(failures[:15])
    assert sent >= MIN_REQUESTS, f"only {sent} requests were sent"
    routes = {c.url.split("?")[0] for c in calls}
    assert any(r.startswith("/admin/") for r in routes)
    assert any(r.endswith(INFERENCE_PATHS) for r in routes)


async def test_generated_inference_requests_with_tokens_required_never_get_a_5xx_or_a_leak(
    redis_url: str, tmp_path: Path
) -> None:
    async with gateway(redis_url, inference_tokens=inference_token_file(tmp_path)) as gw:
        calls = [
            *draw_many(with_inference_token(infer_calls()), TOKEN_EXAMPLES),
            *draw_many(with_inference_token(predict_calls()), TOKEN_EXAMPLES),
        ]
        statuses, failures = await fuzz(gw, calls)
    sent = statuses.total()
    assert not failures, f"{len(failures)} of {sent} answers failed:\n" + "\n".join(failures[:15])
    # Refused without the token, and past the check with it: scored, or refused by the codecs.
    assert statuses[401] and statuses[403] and statuses[200] and statuses[400], statuses
