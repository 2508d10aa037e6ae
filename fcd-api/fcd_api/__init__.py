"""fcd-api: the unprivileged front of fcd (HTTP/JSON API, registry, create/delete flows, fcctl)."""
