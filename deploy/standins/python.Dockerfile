# Local stand-in for the upstream `python:3.11-slim-bookworm` (no registry is reachable on
# the CI machine): Debian's python3 3.11 on a debootstrapped bookworm. It also carries this
# machine's extra CA certificates so pip reaches PyPI through the egress proxy.
ARG STANDIN_BASE=esper-standin/debian:bookworm
FROM ${STANDIN_BASE}
COPY debian.sources /etc/apt/sources.list.d/debian.sources
COPY certs/ /usr/local/share/ca-certificates/
RUN rm -f /etc/apt/sources.list \
 && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends ca-certificates python3 python3-venv python-is-python3 passwd \
 && rm -rf /var/lib/apt/lists/*
# pip's own certificate bundle does not know the proxy's CA; the system store does.
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt LANG=C.UTF-8
CMD ["python3"]
