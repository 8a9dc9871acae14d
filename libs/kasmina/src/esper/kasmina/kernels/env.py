"""One kernel loader per process, configured from the environment.

* ``ESPER_URZA_URL``: Urza's base URL (``http://127.0.0.1:8703``); unset or
  empty: no loader, seeds are built eagerly.
* ``ESPER_KERNEL_CACHE``: the local cache directory (default
  ``$XDG_CACHE_HOME/esper/kernels``, else ``~/.cache/esper/kernels``; where
  that cannot be made, e.g. a read-only home in a container,
  ``<tmp>/esper-kernels-<uid>``).
* ``ESPER_KERNEL_CACHE_BYTES``: the cache's size bound (default 256 MiB).
* ``ESPER_URZA_TIMEOUT_S``: each request's timeout in seconds (default 2).

:func:`process_loader` hands every caller in a process the same loader for the
same settings (``esper.tolaria.runs.build_trainer`` and the Tolaria service
call it), so decoded kernels and the Urza breaker are shared by its runs.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from esper.kasmina.kernels.cache import KernelCache
from esper.kasmina.kernels.loader import KernelLoader
from esper.kasmina.kernels.source import UrzaSource

#: ``build_trainer(kernels=FROM_ENV)``: the process's loader from the environment (None when no Urza is set).
FROM_ENV = "env"
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class KernelSettings:
    urza_url: str
    cache_dir: Path
    cache_bytes: int = DEFAULT_CACHE_BYTES
    timeout_s: float = 2.0
    #: the cache directory was named (``ESPER_KERNEL_CACHE``), so no other is tried when it cannot be used
    cache_named: bool = False


def kernel_settings(environ: Mapping[str, str] | None = None) -> KernelSettings | None:
    """The settings ``environ`` (default ``os.environ``) gives; None without ``ESPER_URZA_URL``.

    ValueError naming the variable and its value when one does not parse.
    """
    env = os.environ if environ is None else environ
    url = env.get("ESPER_URZA_URL", "").strip()
    if not url:
        return None
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"ESPER_URZA_URL={url!r}: must be an http:// or https:// URL")
    cache = env.get("ESPER_KERNEL_CACHE", "").strip()
    if cache:
        cache_dir = Path(cache).expanduser()
    else:
        base = env.get("XDG_CACHE_HOME", "").strip()
        cache_dir = (Path(base) if base else Path.home() / ".cache") / "esper" / "kernels"
    size = int(_number(env, "ESPER_KERNEL_CACHE_BYTES", int, DEFAULT_CACHE_BYTES))
    timeout = _number(env, "ESPER_URZA_TIMEOUT_S", float, 2.0)
    return KernelSettings(url, cache_dir, size, timeout, cache_named=bool(cache))


def _number(env: Mapping[str, str], name: str, kind: type[int] | type[float], default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        value = 0
    if not value > 0:
        raise ValueError(f"{name}={raw!r}: must be a positive {kind.__name__}")
    return value


_loaders: dict[KernelSettings, KernelLoader] = {}
_lock = threading.Lock()


def process_loader(environ: Mapping[str, str] | None = None) -> KernelLoader | None:
    """This process's kernel loader for the environment's settings (made on first use); None without Urza.

    ValueError (naming the variable) for a setting that does not parse or a cache directory that cannot be made.
    """
    settings = kernel_settings(environ)
    if settings is None:
        return None
    with _lock:
        loader = _loaders.get(settings)
        if loader is None:
            try:
                cache = KernelCache(settings.cache_dir, settings.cache_bytes)
            except OSError as exc:
                if settings.cache_named:
                    raise ValueError(f"ESPER_KERNEL_CACHE={str(settings.cache_dir)!r}: cannot use it: {exc}") from None
                fallback = Path(tempfile.gettempdir()) / f"esper-kernels-{os.getuid()}"
                try:
                    cache = KernelCache(fallback, settings.cache_bytes)
                except OSError as again:
                    raise ValueError(
                        f"ESPER_KERNEL_CACHE unset: neither {str(settings.cache_dir)!r} nor {str(fallback)!r} "
                        f"can hold the kernel cache ({again}); set it to a writable directory"
                    ) from None
            loader = KernelLoader(UrzaSource(settings.urza_url, timeout_s=settings.timeout_s), cache)
            _loaders[settings] = loader
        return loader
