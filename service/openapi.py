"""The anonymous /openapi.json: FastAPI's document plus the inference routes it cannot see.

The inference routes are plain Starlette routes (no per-request dependency solving), so FastAPI
leaves them out of its document; their path items are written here instead, with request
bodies described well enough for a schema-driven client (schemathesis) to build requests.
The admin routes stay out (their router is `include_in_schema=False`). Built once, on the
first call, like FastAPI's own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from service.protocol.bodies import (
    FeaturePushBody,
    FeedbackBody,
    InstancesBody,
    PredictBody,
    RepositoryIndexBody,
)
from service.protocol.datatypes import V2_TO_NUMPY
from service.protocol.json_codec import HEADER_LENGTH

Doc = dict[str, Any]
REF = "#/components/schemas/{model}"
BEARER = "bearerAuth"
# A route open unless tokens ask otherwise: anonymous, or a bearer token.
ANONYMOUS_OR_BEARER: list[Doc] = [{}, {BEARER: []}]


def _ref(name: str) -> Doc:
    return {"$ref": REF.format(model=name)}


ERROR: Doc = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}

PARAMETERS: Doc = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]
    },
}

TENSOR: Doc = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(V2_TO_NUMPY)},
        "parameters": _ref("Parameters"),
        # Flat or nested in row-major order; absent when the tensor travels as binary data.
        "data": {"type": "array", "items": {}},
    },
}

INFER_REQUEST: Doc = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        # `timeout` (µs), `priority`, `binary_data_output`.
        "parameters": _ref("Parameters"),
        "inputs": {"type": "array", "minItems": 1, "items": _ref("InferenceTensor")},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": _ref("Parameters")},
            },
        },
    },
}

INFER_RESPONSE: Doc = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": _ref("Parameters"),
        "outputs": {"type": "array", "items": _ref("InferenceTensor")},
    },
}

PREDICT_RESPONSE: Doc = {
    "type": "object",
    "required": ["model", "model_version", "request_id", "predictions"],
    "properties": {
        "model": {"type": "string"},
        "model_version": {"type": "string"},
        "request_id": {"type": "string"},
        "predictions": {},
        "feature_status": {"type": "object"},
        "flags": {"type": "array"},
    },
}

# KServe V1's answer to `instances`; `flags` only when an output contract flagged a row.
V1_PREDICT_RESPONSE: Doc = {
    "type": "object",
    "required": ["predictions"],
    "properties": {"predictions": {"type": "array"}, "flags": {"type": "array"}},
}

# The two forms of :predict, told apart by their keys.
PREDICT_REQUEST: Doc = {"oneOf": [_ref("PredictBody"), _ref("InstancesBody")]}
PREDICT_ANSWER: Doc = {"oneOf": [_ref("PredictResponse"), _ref("V1PredictResponse")]}

V1_READY: Doc = {
    "type": "object",
    "required": ["name", "ready"],
    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
}

PUSH_RESPONSE: Doc = {
    "type": "object",
    "required": ["view", "written"],
    "properties": {"view": {"type": "string"}, "written": {"type": "integer"}},
}
FEEDBACK_RESPONSE: Doc = {
    "type": "object",
    "required": ["model", "model_version", "request_id", "route", "joined", "label_delay_ms"],
    "properties": {
        "model": {"type": "string"},
        "model_version": {"type": "string"},
        "request_id": {"type": "string", "description": "the labelled prediction's"},
        "route": {"type": "string"},
        "joined": {"type": "integer", "description": "labels joined"},
        "label_delay_ms": {"type": "integer", "description": "label arrival minus prediction"},
    },
}

# Every failure answers {"error": ...} with one of these.
FAILURES = {
    "400": "malformed request",
    "401": "no bearer token where one is required",
    "403": "a token without the scope",
    "404": "unknown model, version, view or entity",
    "413": "body over the size limit",
    "422": "an answer outside the model's output contract",
    "429": "overloaded: retry after Retry-After seconds",
    "503": "not ready, or the feature store is down",
    "504": "deadline exceeded",
}
# A push scores nothing and has no deadline.
PUSH_FAILURES = {status: why for status, why in FAILURES.items() if status not in ("422", "504")}


def _path_param(name: str) -> Doc:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


MODEL = _path_param("model")
VERSION = _path_param("version")
QUERY_VERSION: Doc = {
    "name": "version",
    "in": "query",
    "required": False,
    "schema": {"type": "string"},
    "description": "the version to answer, where the path names none",
}
TIMEOUT_HEADER: Doc = {
    "name": "x-mlgate-timeout-ms",
    "in": "header",
    "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0},
    "description": "the client's deadline in milliseconds",
}
BINARY_HEADER: Doc = {
    "name": HEADER_LENGTH,
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 0},
    "description": "the JSON part's length, when binary tensor data follows it",
}


def _answer(why: str, schema: str) -> Doc:
    return {"description": why, "content": {"application/json": {"schema": _ref(schema)}}}


def _failure(why: str) -> Doc:
    return _answer(why, "Error")


def _operation(
    summary: str, body: str, answer: str, parameters: list[Doc], failures: dict[str, str]
) -> Doc:
    responses: Doc = {"200": _answer("OK", answer)}
    for status, why in failures.items():
        responses[status] = _failure(why)
    return {
        "summary": summary,
        "parameters": parameters,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        },
        "responses": responses,
        "security": ANONYMOUS_OR_BEARER,
    }


def _inference_paths() -> dict[str, Doc]:
    infer = ("V2 inference", "InferenceRequest", "InferenceResponse")
    predict = ("Predict by entity ids or KServe V1 instances", "PredictRequest", "PredictAnswer")
    routes = {
        "/v2/models/{model}/infer": (infer, [MODEL, QUERY_VERSION, BINARY_HEADER]),
        "/v2/models/{model}/versions/{version}/infer": (infer, [MODEL, VERSION, BINARY_HEADER]),
        "/v1/models/{model}:predict": (predict, [MODEL, QUERY_VERSION]),
        "/v1/models/{model}/versions/{version}:predict": (predict, [MODEL, VERSION]),
    }
    return {
        path: {"post": _operation(*names, [*parameters, TIMEOUT_HEADER], FAILURES)}
        for path, (names, parameters) in routes.items()
    }


def _schema_of(body: type[BaseModel]) -> Doc:
    return body.model_json_schema(ref_template=REF)


def add_inference_paths(doc: Doc) -> None:
    """Put the inference routes, the push body and the bearer scheme into FastAPI's `doc`."""
    components = doc.setdefault("components", {})
    components.setdefault("schemas", {}).update(
        {
            "Error": ERROR,
            "Parameters": PARAMETERS,
            "InferenceTensor": TENSOR,
            "InferenceRequest": INFER_REQUEST,
            "InferenceResponse": INFER_RESPONSE,
            "PredictRequest": PREDICT_REQUEST,
            "PredictBody": _schema_of(PredictBody),
            "InstancesBody": _schema_of(InstancesBody),
            "PredictAnswer": PREDICT_ANSWER,
            "PredictResponse": PREDICT_RESPONSE,
            "V1PredictResponse": V1_PREDICT_RESPONSE,
            "V1ModelReady": V1_READY,
            "RepositoryIndexBody": _schema_of(RepositoryIndexBody),
            "FeaturePushBody": _schema_of(FeaturePushBody),
            "FeaturePushResponse": PUSH_RESPONSE,
            "FeedbackBody": _schema_of(FeedbackBody),
            "FeedbackResponse": FEEDBACK_RESPONSE,
        }
    )
    components.setdefault("securitySchemes", {})[BEARER] = {"type": "http", "scheme": "bearer"}
    doc["paths"].update(_inference_paths())
    # The push route is FastAPI's, but reads its body itself: FastAPI knows only its path.
    push = doc["paths"]["/v1/features/{view_name}"]["post"]
    written = _operation(
        "Write feature rows", "FeaturePushBody", "FeaturePushResponse", [], PUSH_FAILURES
    )
    push.update({**written, "parameters": push.get("parameters", [])})
    labels = _operation(
        "Join true labels to a recorded prediction",
        "FeedbackBody",
        "FeedbackResponse",
        [],
        {**PUSH_FAILURES, "409": "no audit log to join labels to"},
    )
    doc["paths"]["/v1/feedback"]["post"].update(labels)
    # So is the repository index, whose body may be left out (tritonclient sends none).
    index = doc["paths"]["/v2/repository/index"]["post"]
    index["requestBody"] = {
        "required": False,
        "content": {"application/json": {"schema": _ref("RepositoryIndexBody")}},
    }
    index["responses"]["400"] = _failure(FAILURES["400"])
    # KServe V1 readiness is a plain route (its path has a convertor FastAPI cannot read).
    doc["paths"]["/v1/models/{model}"] = {
        "get": {
            "summary": "KServe V1 model readiness",
            "parameters": [MODEL],
            "responses": {"200": _answer("OK", "V1ModelReady"), "404": _failure(FAILURES["404"])},
        }
    }


def openapi_with_inference_paths(app: FastAPI) -> Callable[[], Doc]:
    """A replacement for `app.openapi` that adds the inference routes to FastAPI's document."""
    fastapi_document = app.openapi

    def openapi() -> Doc:
        if app.openapi_schema is None:
            doc = fastapi_document()
            add_inference_paths(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    return openapi
