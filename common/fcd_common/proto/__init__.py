"""RPC contracts between fcd-api and the helpers: one module per helper.

Each module defines the request Structs (tag ``"<daemon>.<method>"``), the
reply Structs, and ``PROTOCOL``. The helper serves exactly these; fcd-api's
typed clients mirror them one to one.
"""
