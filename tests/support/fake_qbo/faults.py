"""Every error body the fake answers, in the shapes Intuit's servers are seen to send.

Sources: Intuit's error-code page (a ``Fault`` with ``Error[{Message, Detail, code}]`` and a
``type``; HTTP 200 may still carry a Fault); bodies quoted in public issues of Intuit's and
others' SDKs (python-quickbooks#250, node-quickbooks#154, QuickBooks-V3-PHP-SDK#54,
QuickBooks-V3-Java-SDK#47) and tests of other clients quoting Intuit's sandbox verbatim.
Assumptions, each the stricter reading:

- 401 and 403 come from Intuit's gateway in its *lowercase* shape, ``{"fault": {"error":
  [{"message": "message=AuthenticationFailed; errorCode=003200; statusCode=401", "detail": ...,
  "code": "3200", "element": null}], "type": "AUTHENTICATION"}, "time": <epoch ms>, ...}``, as
  the quoted responses show; a client must read both spellings of ``Fault``.
- ThrottleExceeded carries ``code`` ``"3001"`` (the quoted bodies), with ``errorCode=003001`` only
  inside ``Message``; a client matching on ``"003001"`` in ``code`` is wrong.
- A query the parser rejects is 400 ``ValidationFault`` code ``4000`` ("Error parsing query",
  ``QueryParserError: ...``); a query that parses but is invalid (unknown property, MAXRESULTS
  over 1000) is code ``4001`` ("Invalid query", ``QueryValidationError: ...``).
- 500 is a JSON ``SystemFault`` code ``10000``; 503 is an HTML page (a gateway's, not the API's),
  so a client must not expect JSON from every 5xx.
- The CDC look-back error's message is the one quoted in QuickBooksSharp#19; its code (``4001``)
  is a guess.
- OAuth errors are RFC 6749 bodies: ``{"error": "invalid_grant"}`` (400), ``invalid_client``
  (401), ``unsupported_grant_type`` / ``invalid_request`` (400).
"""

from __future__ import annotations

from typing import Any

JsonObject = dict[str, Any]


def fault(message: str, detail: str | None, code: str, kind: str, time: str) -> JsonObject:
    """The API's ``Fault`` body (capitalised keys, ``time`` an ISO string)."""
    error: JsonObject = {"Message": message, "code": code}
    if detail is not None:
        error["Detail"] = detail
    return {"Fault": {"Error": [error], "type": kind}, "time": time}


def gateway_fault(status: int, detail: str, epoch_ms: int) -> JsonObject:
    """The gateway's lowercase body for 401 (AuthenticationFailed) and 403 (AuthorizationFailed)."""
    name, code = (
        ("AuthenticationFailed", "3200") if status == 401 else ("AuthorizationFailed", "3100")
    )
    return {
        "warnings": None,
        "intuitObject": None,
        "fault": {
            "error": [
                {
                    "message": f"message={name}; errorCode=00{code}; statusCode={status}",
                    "detail": detail,
                    "code": code,
                    "element": None,
                }
            ],
            "type": "AUTHENTICATION" if status == 401 else "SERVICE",
        },
        "report": None,
        "queryResponse": None,
        "batchItemResponse": [],
        "attachableResponse": [],
        "syncErrorResponse": None,
        "requestId": None,
        "time": epoch_ms,
        "status": None,
        "cdcresponse": [],
    }


def throttled(time: str) -> JsonObject:
    return fault(
        "message=ThrottleExceeded; errorCode=003001; statusCode=429",
        "The request limit was reached.  Try again later",
        "3001",
        "SERVICE",
        time,
    )


def parse_error(detail: str, time: str) -> JsonObject:
    return fault(
        "Error parsing query", f"QueryParserError: {detail}", "4000", "ValidationFault", time
    )


def invalid_query(detail: str, time: str) -> JsonObject:
    return fault(
        "Invalid query", f"QueryValidationError: {detail}", "4001", "ValidationFault", time
    )


def validation(message: str, detail: str, time: str) -> JsonObject:
    return fault(message, detail, "4001", "ValidationFault", time)


def system_error(time: str) -> JsonObject:
    return fault(
        "An application error has occurred while processing your request",
        "System Failure Error: An unexpected error occurred while accessing or saving "
        "your data. Please wait a few minutes and try again.",
        "10000",
        "SystemFault",
        time,
    )


UNAVAILABLE_HTML = (
    b"<html><head><title>503 Service Temporarily Unavailable</title></head>"
    b"<body><h1>Service Temporarily Unavailable</h1></body></html>"
)


def oauth_error(error: str, description: str | None = None) -> JsonObject:
    body: JsonObject = {"error": error}
    if description is not None:
        body["error_description"] = description
    return body


class FaultError(Exception):
    """An error answer: the HTTP status and the JSON body to send."""

    def __init__(self, status: int, body: JsonObject) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
