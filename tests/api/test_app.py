"""The application as a whole: OpenAPI, docs and one error shape for every error."""

from __future__ import annotations

import json
import re

from tests.api.conftest import sqlite_only

pytestmark = sqlite_only


def test_openapi_lists_every_path_with_its_documentation(api):
    api.headers.pop("Authorization")

    document = api.get("/openapi.json").json()

    assert set(document["paths"]) == {
        "/healthz",
        "/v1/messages",
        "/v1/messages/{message_id}",
        "/v1/messages/{message_id}/cancel",
        "/v1/templates",
        "/v1/templates/{name}",
        "/v1/templates/{name}/versions",
        "/v1/templates/{name}/render",
    }
    send = document["paths"]["/v1/messages"]["post"]
    assert "committed" in send["description"]
    assert {"202", "200", "401", "415", "422"} <= set(send["responses"])
    assert send["parameters"][0]["name"] == "Idempotency-Key"
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    request_fields = document["components"]["schemas"]["SendRequest"]["properties"]
    assert "from" in request_fields
    assert "from_" not in request_fields
    message_fields = document["components"]["schemas"]["MessageOut"]["properties"]
    assert "from" in message_fields


def test_openapi_describes_both_bodies_of_a_send(api):
    document = api.get("/openapi.json").json()

    content = document["paths"]["/v1/messages"]["post"]["requestBody"]["content"]
    schemas = document["components"]["schemas"]

    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/SendRequest"}
    form = content["multipart/form-data"]
    assert form["schema"]["properties"]["message"]["$ref"] == "#/components/schemas/SendRequest"
    assert form["schema"]["properties"]["attachments"]["items"]["format"] == "binary"
    assert form["encoding"]["message"]["contentType"] == "application/json"
    assert {"template", "context", "locale", "attachments"} <= set(
        schemas["SendRequest"]["properties"]
    )
    # every reference in the document resolves
    text = json.dumps(document)
    for name in set(re.findall(r"#/components/schemas/(\w+)", text)):
        assert name in schemas, name
    assert "template" in schemas["ErrorDetail"]["properties"]


def test_every_endpoint_behind_a_key_documents_401_and_503_with_retry_after(api):
    # the key itself is read from the database, so any of them answers 503 when it is down
    document = api.get("/openapi.json").json()

    keyed = [
        (path, method, operation)
        for path, operations in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in operations.items()
    ]

    assert len(keyed) >= 8
    for path, method, operation in keyed:
        responses = operation["responses"]
        assert {"401", "503"} <= set(responses), (method, path)
        unavailable = responses["503"]
        assert "Retry-After" in unavailable["headers"], (method, path)
        assert unavailable["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }


def test_docs_page_is_served(api):
    response = api.get("/docs")

    assert response.status_code == 200
    assert "/openapi.json" in response.text


def test_unknown_paths_and_methods_answer_in_the_error_shape(api):
    missing = api.get("/v1/nothing-here")
    wrong_method = api.delete("/v1/messages")

    assert missing.status_code == 404
    assert missing.json() == {"error": {"type": "NotFound", "message": "Not Found"}}
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["type"] == "MethodNotAllowed"
    assert "POST" in wrong_method.headers["Allow"]
