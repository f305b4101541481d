"""Running the federation for real: the platform's SuperLink and the merchants' SuperNodes.

``platform`` makes and runs the platform's side (a CA and server certificate, the roster of the
shops' keys, ``flower-superlink`` with TLS and SuperNode authentication, the run); ``merchant``
makes a shop's keys and starts its ``flower-supernode`` on its own data; ``tls`` and ``keys`` make
the certificates and keys with ``cryptography``.
"""
