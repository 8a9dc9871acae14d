"""What every Esper service shares: settings, health and metrics routes, the runtime."""

from esper.service.health import ReadinessCheck, health_router
from esper.service.http_policy import BodyLimit, apply_http_policy
from esper.service.readiness import BusReadiness
from esper.service.runtime import serve
from esper.service.settings import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_PORTS,
    ServiceSettings,
    add_arguments,
    configure_logging,
    settings_from,
)

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORTS",
    "BodyLimit",
    "BusReadiness",
    "ReadinessCheck",
    "ServiceSettings",
    "add_arguments",
    "apply_http_policy",
    "configure_logging",
    "health_router",
    "serve",
    "settings_from",
]
