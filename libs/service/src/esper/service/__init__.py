"""What every Esper service shares: settings, health and metrics routes, the runtime."""

from esper.service.health import ReadinessCheck, health_router
from esper.service.readiness import BusReadiness
from esper.service.runtime import serve
from esper.service.settings import (
    DEFAULT_PORTS,
    ServiceSettings,
    add_arguments,
    configure_logging,
    settings_from,
)

__all__ = [
    "BusReadiness",
    "DEFAULT_PORTS",
    "ReadinessCheck",
    "ServiceSettings",
    "add_arguments",
    "configure_logging",
    "health_router",
    "serve",
    "settings_from",
]
