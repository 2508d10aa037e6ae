"""A VM spec is only ever stored if it reads back.

A spec is built from a create's body and then changed by flows (a resources
PATCH merges its fields in). A merged value can pass the update's own type yet
break the spec's: ``cpu_quota`` 0.005 is a valid update (``ge=0``; 0 removes
the quota) but not a valid quota (``ge=0.01``), and once written the row no
longer decodes, so every call on that VM, and ``GET /v1/vms``, answered 500
(found by the API fuzz test). :func:`checked_spec` re-validates a spec against
its own type; the registry calls it on every write and a flow may call it
before it acts, so a bad merge is a 400 naming the field, and nothing is written.
"""

from __future__ import annotations

import re

import msgspec

from fcd_common.errors import InvalidArgument

from .models import CreateVMRequest

__all__ = ["checked_spec"]

_FIELD_RE = re.compile(r"at `\$\.([A-Za-z0-9_]+)")


def checked_spec(spec: CreateVMRequest) -> CreateVMRequest:
    """``spec`` if it passes its own type's constraints; InvalidArgument otherwise."""
    try:
        msgspec.convert(msgspec.to_builtins(spec), CreateVMRequest)
    except msgspec.ValidationError as e:
        m = _FIELD_RE.search(str(e))
        field = m.group(1) if m else None
        raise InvalidArgument(
            f"the VM's spec would be invalid: {e}", details={"field": field}
        ) from None
    return spec
