"""schemathesis hooks for scripts/api-fuzz: what the OpenAPI document says
in words because JSON Schema cannot say it.

- POST /system/import takes JSON lines (application/x-ndjson), sent as the
  text they are.
- POST /txn refuses a branch that writes one key twice (400, as the
  document says). A rule across items is beyond JSON Schema, so generated
  write keys are made distinct within each branch; everything else about
  the case is left as generated.
"""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")


def _distinct_writes(ops):
    if not isinstance(ops, list):
        return ops
    seen = set()
    for n, op in enumerate(ops):
        if not isinstance(op, dict) or op.get("op") not in ("put", "delete"):
            continue
        key = op.get("key")
        if not isinstance(key, str):
            continue
        while key in seen:
            key = f"{key}#{n}"
        seen.add(key)
        op["key"] = key
    return ops


@schemathesis.hook("map_body").apply_to(path="/txn", method="POST")
def distinct_txn_writes(context, body):
    if isinstance(body, dict):
        for branch in ("success", "failure"):
            if branch in body:
                body[branch] = _distinct_writes(body[branch])
    return body
