# Local stand-in for the upstream `redis:7.0` (Debian bookworm's redis-server 7.0): runs as
# the redis user in /data, like the upstream image, so the compose file stays the standard one.
ARG STANDIN_BASE=esper-standin/debian:bookworm
FROM ${STANDIN_BASE}
COPY debian.sources /etc/apt/sources.list.d/debian.sources
RUN rm -f /etc/apt/sources.list \
 && printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data && chown redis:redis /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
