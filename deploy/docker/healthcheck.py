#!/usr/bin/env python3
"""Container health probe: ``esper-healthcheck SERVICE [PATH]`` exits 0 when the service's route answers 2xx.

Reads the port the service itself reads (``ESPER_<SERVICE>_PORT``), so a port changed
by the environment is probed where the service listens. The default path is
``/readyz`` (consuming and connected to Redis): compose orders start-up on it.
Standard library only, because slim base images carry no curl.
"""

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORTS = {"tamiyo": 8700, "tolaria": 8701, "nissa": 8702, "urza": 8703, "tezzeret": 8704}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in DEFAULT_PORTS:
        print(f"usage: esper-healthcheck {{{'|'.join(DEFAULT_PORTS)}}} [PATH]", file=sys.stderr)
        return 2
    service = argv[0]
    path = argv[1] if len(argv) > 1 else "/readyz"
    port = os.environ.get(f"ESPER_{service.upper()}_PORT") or str(DEFAULT_PORTS[service])
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if 200 <= response.status < 300 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
