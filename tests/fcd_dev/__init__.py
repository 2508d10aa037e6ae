"""Development tooling: run the four daemons as processes (``suite``) and ``fcd up`` (``devup``).

Not part of any daemon: it lives in the source tree beside the Firecracker and
jailer test doubles (``tests/fakes/``) it launches, and needs a checkout
(an editable install) to find them. No production module may import it
(``tests/unit/test_import_contracts.py``).
"""
