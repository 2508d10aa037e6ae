"""RPC contracts between fcd-api and the helpers: one module per helper.

Each module defines the request Structs (tag ``"<daemon>.<method>"``, each a
``Request[ItsReply]`` with its ``access`` rule), the reply Structs, and
``PROTOCOL``. The helper serves exactly these (its ``@handles`` methods);
fcd-api calls them with ``RpcClient.call(req)``, which returns the reply type
the request names. Records that more than one daemon uses (``PortMapping``,
``DiskInfo``, ``NetInfo`` ...) are defined here once and embedded where they
travel on.
"""
