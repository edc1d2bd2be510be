"""``/streams``: Kinesis' PutRecords over HTTP, and where each mapping stands.

``POST /streams/NAME/records`` takes ``{"Records": [{"Data": base64,
"PartitionKey": k}, ...]}`` (Kinesis PutRecords' shape) with the webhook or
the admin token, and answers once the records are in the stream, with
Kinesis' answer (``FailedRecordCount``, ``Records[].SequenceNumber``,
``ShardId``): so a device, a page's beacon or a script can feed a stream
with no client library. ``GET /streams`` is ``fileproc streams status --json``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from fileproc.errors import ConfigError, StreamError
from fileproc.jsonbody import loads
from fileproc.streams import admin as streams_admin
from fileproc.streams.events import shard_id
from fileproc.web import auth
from fileproc.web.bounds import JSONRoute
from fileproc.web.responses import json_response

router = APIRouter(route_class=JSONRoute)

MAX_RECORDS = 500  # Kinesis' PutRecords limit
MAX_RECORD_BYTES = 1024 * 1024


def _webhook_or_admin(request: Request) -> None:
    tokens = auth.tokens_of(request)
    given = auth.bearer(request)
    if not (auth.same(given, tokens.webhook) or auth.same(given, tokens.admin)):
        raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})


def records_of(body: Any) -> list[tuple[bytes | None, bytes]]:
    """The (key, data) records of a PutRecords body; HTTPException 400 naming what is wrong."""
    records = body.get("Records") if isinstance(body, dict) else None
    if not isinstance(records, list) or not records:
        raise HTTPException(400, 'the body must be {"Records": [{"Data": base64, "PartitionKey": key}, ...]}')
    if len(records) > MAX_RECORDS:
        raise HTTPException(413, f"{len(records)} records: at most {MAX_RECORDS} per request")
    out = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not isinstance(record.get("Data"), str):
            raise HTTPException(400, f"Records[{i}].Data: a base64 string is required")
        try:
            data = base64.b64decode(record["Data"], validate=True)
        except (binascii.Error, ValueError):
            raise HTTPException(400, f"Records[{i}].Data: not base64") from None
        if len(data) > MAX_RECORD_BYTES:
            raise HTTPException(413, f"Records[{i}].Data: over {MAX_RECORD_BYTES} bytes")
        key = record.get("PartitionKey")
        if key is not None and not isinstance(key, str):
            raise HTTPException(400, f"Records[{i}].PartitionKey: a string is required")
        out.append((key.encode() if key is not None else None, data))
    return out


@router.post("/streams/{name}/records", dependencies=[Depends(_webhook_or_admin)])
async def put_records(name: str, request: Request) -> Any:
    """Append the records; 200 with Kinesis' PutRecords answer once the stream holds them."""
    records = records_of(loads(await request.body()))
    service = request.app.state.service
    try:
        done = await run_in_threadpool(streams_admin.put, service, name, records)
    except ConfigError as exc:
        raise HTTPException(404, str(exc)) from exc
    except StreamError as exc:
        raise HTTPException(503, str(exc)) from exc
    return json_response({"FailedRecordCount": 0, "Records": [
        {"SequenceNumber": p.position, "ShardId": shard_id(p.partition)} for p in done]})


@router.get("/streams", dependencies=[Depends(auth.admin)])
async def streams_status(request: Request) -> Any:
    """Each mapping and its partitions (``fileproc streams status --json``)."""
    return json_response(await run_in_threadpool(streams_admin.status, request.app.state.service))


__all__ = ["records_of", "router"]
