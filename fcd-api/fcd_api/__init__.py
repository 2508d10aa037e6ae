"""fcd-api: the unprivileged front of fcd (HTTP/JSON API, registry, flows, fcctl).

Skeleton: ``plan`` (pure: kernel args, limits, the launch request), ``states``
(the transition table), ``registry`` (SQLite adapter), ``clients`` (one
RpcClient per helper), ``service`` (the flows: create/start/stop/pause/
resume/delete, ports), ``app`` and ``*_routes`` (the HTTP face), ``cli``
(fcctl), ``__main__`` (composition root).
"""
