"""Running the federation for real: the platform's SuperLink and the merchants' SuperNodes.

``platform`` makes and runs the platform's side (a CA and server certificate, the roster of the
shops' keys, ``flower-superlink`` with TLS and SuperNode authentication on loopback, the run) and
``fleet_proxy`` is all that faces the merchants: the Fleet API, nothing else. ``merchant`` makes a
shop's keys and starts its ``flower-supernode`` on its own data with ``node_runner`` beside it,
which runs the installed ClientApp for the pinned app release only (``app_pin``). ``tls`` and
``keys`` make the certificates and keys with ``cryptography``; ``private`` keeps directories 0700
and secrets 0600; ``flower_internals`` holds every internal Flower API used.
"""
