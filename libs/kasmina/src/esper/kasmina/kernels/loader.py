"""Germinating from compiled kernels: fetch through the cache, verify, decode, check, copy; else build eagerly.

:meth:`KernelLoader.seed` is what germination calls. It names the kernel
(:func:`esper.leyline.compile.kernel_id_for` over the resolved config, the
slot's shape and layout, dtype and device), and returns a seed module:

1. the kernel's record from the cache index, else from Urza (only validated
   kernels; the record must match the slot's shape and layout);
2. the artifact from the cache (re-hashed on every load), else from Urza
   (hashed against the record before it is cached);
3. the decoded module for that content hash (decoded once, after a trial
   forward proved it maps the slot's shape to itself), copied with fresh
   parameters (:func:`fresh_copy`): those eager construction would draw
   (``rng_init``, replayed after the first time).

Any failure on the way (:class:`esper.leyline.compile.KernelFailure`) is
counted, and the blueprint is built eagerly instead: germination never fails
because a kernel did. The returned :class:`SeedBuild` says which path it took
and, after a fallback, carries the telemetry event to publish.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from esper.kasmina.blueprints import get_blueprint
from esper.kasmina.blueprints.registry import BlueprintSpec, Resolved
from esper.kasmina.kernels.artifact import CorruptArtifact, fresh_copy, load_artifact
from esper.kasmina.kernels.cache import KernelCache, KernelRecord
from esper.kasmina.kernels.metrics import KernelMetrics, default_metrics
from esper.kasmina.kernels.replay import InitRecipe, record_init
from esper.kasmina.kernels.source import KernelNotFound, KernelNotValidated, KernelSource, SourceUnavailable
from esper.kasmina.model import MorphogeneticModel
from esper.leyline import EventKind, SeedStage, SeedTransition, TelemetryEvent
from esper.leyline.compile import KernelFailure, kernel_id_for

ConfigValue = int | float | str | bool


class KernelLoadError(Exception):
    """A kernel that could not become a seed, and why (``failure``)."""

    def __init__(self, failure: KernelFailure, message: str) -> None:
        super().__init__(f"{failure.value}: {message}")
        self.failure = failure


@dataclass(frozen=True, slots=True)
class SeedBuild:
    """A seed module and how it was made: ``origin`` is ``cache``, ``urza`` or ``eager``."""

    module: nn.Module
    kernel_id: str
    blueprint: str
    origin: str
    seconds: float
    failure: KernelFailure | None = None
    error: str = ""

    def fallback_event(self, epoch: int | None = None, slot_id: str | None = None) -> TelemetryEvent | None:
        """The telemetry event a fallback publishes (None when the kernel was used)."""
        if self.failure is None:
            return None
        return TelemetryEvent(
            kind=EventKind.KERNEL_FALLBACK,
            epoch=epoch,
            slot_id=slot_id,
            message=f"kernel {self.kernel_id} for {self.blueprint!r} not used, built eagerly: {self.error}",
            attributes={"failure": self.failure.value, "kernel_id": self.kernel_id, "blueprint": self.blueprint},
        )


def _placed(module: nn.Module, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a freshly built seed is already on ``device`` in ``dtype``, so ``.to`` would change nothing.

    A seed's tensors are made together (one eager build, or one copy of a
    decoded program), so its first parameter stands for all of them.
    ``Module.to`` walks every submodule even when nothing moves: a fifth of a
    warm germination's time.
    """
    first = next(module.parameters(), None)
    if first is None:
        return False
    same_device = first.device.type == device.type and (device.index is None or first.device.index == device.index)
    return same_device and first.dtype == dtype


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``float32`` (the spelling kernel ids use)."""
    return str(dtype).removeprefix("torch.")


class KernelLoader:
    """Seeds from kernels in ``source`` (Urza) through ``cache``; ``decoded_max`` decoded modules kept in memory.

    ``rng_init`` (default): a kernel seed's initial weights are drawn from
    torch's RNG exactly as eager construction draws them, so a run makes the
    same numbers with or without kernels, and whether Urza answered changes
    nothing but speed. The first seed of a blueprint, config and shape takes
    the tensors of an eager build, recorded as it runs; later ones replay that
    recording's ops (:mod:`esper.kasmina.kernels.replay`, proved bit-identical
    when made) without building modules. Without ``rng_init`` a seed starts
    from the weights compiled into the artifact (every seed of one kernel then
    starts alike).

    After Urza fails to answer, it is not asked again for ``retry_after_s``
    (cached kernels still load): a training loop germinating while Urza is
    down waits for one timeout, not one per germination.
    """

    def __init__(
        self,
        source: KernelSource | None,
        cache: KernelCache,
        metrics: KernelMetrics | None = None,
        *,
        decoded_max: int = 64,
        rng_init: bool = True,
        retry_after_s: float = 30.0,
    ) -> None:
        self.source = source
        self.cache = cache
        self.metrics = metrics or default_metrics()
        self.decoded_max = decoded_max
        self.rng_init = rng_init
        self.retry_after_s = retry_after_s
        self._down_until = 0.0
        self._down_reason = ""
        self._decoded: OrderedDict[str, nn.Module] = OrderedDict()
        self._kernel_ids: dict[tuple[object, ...], str] = {}
        self._recipes: dict[tuple[object, ...], InitRecipe | None] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ entry points
    def seed(
        self,
        blueprint: str,
        config: Mapping[str, ConfigValue] | None,
        feature_shape: tuple[int, ...],
        layer_kind: str | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> SeedBuild:
        """A seed for ``blueprint`` at a slot with these features: the kernel if it loads, else built eagerly.

        ValueError (unknown blueprint, config or shape that does not fit) is
        raised before any kernel is tried: that is a bad command, not a bad kernel.
        """
        started = time.perf_counter()
        spec = get_blueprint(blueprint)
        resolved = spec.resolve(feature_shape, config, layer_kind=layer_kind)
        device = torch.device(device)
        kernel_id = self._kernel_id(blueprint, resolved.shape, resolved.config, resolved.kind, dtype, device)
        weights: nn.Module | dict[str, torch.Tensor] | None = None
        try:
            if self.rng_init:
                weights = self._initial_weights(spec, resolved)
            module, origin = self.load(kernel_id, resolved.shape, resolved.kind, weights=weights)
        except KernelLoadError as exc:
            self.metrics.fallbacks.labels(exc.failure.value).inc()
            # The RNG was drawn once for this seed already: an eager build takes those numbers, draws none again.
            if weights is None:
                eager = spec.make(resolved)
            elif isinstance(weights, nn.Module):
                eager = weights
            else:
                with torch.random.fork_rng(devices=[]):
                    eager = spec.make(resolved)
                eager.load_state_dict(weights)
            module = eager.to(device=device, dtype=dtype)
            seconds = time.perf_counter() - started
            return SeedBuild(module, kernel_id, blueprint, "eager", seconds, exc.failure, str(exc))
        if not _placed(module, device, dtype):
            module = module.to(device=device, dtype=dtype)
        return SeedBuild(module, kernel_id, blueprint, origin, time.perf_counter() - started)

    def _initial_weights(self, spec: BlueprintSpec, resolved: Resolved) -> nn.Module | dict[str, torch.Tensor]:
        """The seed's initial tensors as eager construction draws them: replayed (:mod:`.replay`) where the
        blueprint's recipe is proved, from an eager build otherwise (the first time, recording it)."""
        key = (
            spec.name,
            resolved.kind,
            resolved.shape,
            tuple(sorted(resolved.config.items())),
            torch.get_default_dtype(),
        )
        if key not in self._recipes:
            module, recipe = record_init(lambda: spec.make(resolved))
            self._recipes[key] = recipe
            return module
        recipe = self._recipes[key]
        return spec.make(resolved) if recipe is None else recipe.replay()

    def _kernel_id(
        self,
        blueprint: str,
        shape: tuple[int, ...],
        config: Mapping[str, ConfigValue],
        kind: str,
        dtype: torch.dtype,
        device: torch.device,
    ) -> str:
        """:func:`kernel_id_for` (a hash over canonical JSON), remembered per slot and blueprint."""
        key = (blueprint, shape, tuple(sorted(config.items())), kind, dtype, device.type)
        kernel_id = self._kernel_ids.get(key)
        if kernel_id is None:
            kernel_id = kernel_id_for(
                blueprint, shape, config, layout=kind, dtype=dtype_name(dtype), device=device.type
            )
            if len(self._kernel_ids) >= 4096:
                self._kernel_ids.clear()
            self._kernel_ids[key] = kernel_id
        return kernel_id

    def seed_for_slot(
        self, model: MorphogeneticModel, slot_id: str, blueprint: str, config: Mapping[str, ConfigValue] | None
    ) -> SeedBuild | None:
        """:meth:`seed` at one of ``model``'s slots; None where germination would refuse anyway.

        (Unknown slot or blueprint, a slot that is not DORMANT or not probed:
        :meth:`MorphogeneticModel.germinate` gives the reason, no kernel is fetched.)
        """
        slot = model.slots[slot_id] if slot_id in model.slots else None
        if slot is None or slot.stage is not SeedStage.DORMANT or slot.feature_shape is None or slot.layer_kind is None:
            return None
        try:
            get_blueprint(blueprint)
        except ValueError:
            return None
        return self.seed(blueprint, config, slot.feature_shape, slot.layer_kind, dtype=slot.dtype, device=slot.device)

    def germinate(
        self,
        model: MorphogeneticModel,
        slot_id: str,
        blueprint: str,
        config: Mapping[str, ConfigValue] | None,
        epoch: int,
        reason: str,
        on_event: Callable[[TelemetryEvent], None] | None = None,
    ) -> SeedTransition:
        """``model.germinate`` with the seed from its kernel; a fallback's event goes to ``on_event`` first.

        Raises what :meth:`MorphogeneticModel.germinate` raises (the gate and the
        config decide; a kernel failure never does).
        """
        build = self.seed_for_slot(model, slot_id, blueprint, config)
        if build is not None and on_event is not None:
            event = build.fallback_event(epoch, slot_id)
            if event is not None:
                on_event(event)
        seed = build.module if build is not None else None
        return model.germinate(slot_id, blueprint, config, epoch=epoch, reason=reason, seed=seed)

    def load(
        self,
        kernel_id: str,
        shape: tuple[int, ...],
        layout: str | None,
        weights: nn.Module | dict[str, torch.Tensor] | None = None,
    ) -> tuple[nn.Module, str]:
        """A fresh module from kernel ``kernel_id`` for features ``shape``; (module, ``cache`` | ``urza``).

        ``weights``: a module whose parameters the copy takes (see :func:`fresh_copy`).
        Raises KernelLoadError naming the failure kind.
        """
        started = time.perf_counter()
        record = self.cache.record(kernel_id)
        if record is None:
            record = self._fetch_record(kernel_id)
        if tuple(record.input_shape) != tuple(shape) or (layout is not None and record.layout not in (None, layout)):
            raise KernelLoadError(
                KernelFailure.SHAPE_MISMATCH,
                f"kernel {kernel_id} is for {record.layout} features {list(record.input_shape)}, "
                f"the slot has {layout} features {list(shape)}",
            )
        data = self.cache.get(record.sha256)
        origin = "cache"
        if data is None:
            origin = "urza"
            data = self._fetch_artifact(record)
        template = self._template(record, data, shape)
        try:
            module = fresh_copy(template, weights)
        except ValueError as exc:  # other parameter names or shapes: not this blueprint's program
            raise KernelLoadError(KernelFailure.SHAPE_MISMATCH, f"kernel {kernel_id}: {exc}") from None
        (self.metrics.cache_hits if origin == "cache" else self.metrics.cache_misses).inc()
        self.metrics.load_seconds.labels("hit" if origin == "cache" else "miss").observe(time.perf_counter() - started)
        return module, origin

    # ------------------------------------------------------------------ steps
    def _need_source(self) -> KernelSource:
        if self.source is None:
            raise KernelLoadError(KernelFailure.URZA_UNAVAILABLE, "no kernel store configured")
        wait = self._down_until - time.monotonic()
        if wait > 0:  # Urza just failed: do not stall another germination on its timeout
            raise KernelLoadError(
                KernelFailure.URZA_UNAVAILABLE, f"{self._down_reason} (not asked again for {wait:.0f}s)"
            )
        return self.source

    def _unavailable(self, exc: Exception) -> KernelLoadError:
        """Open the breaker for ``retry_after_s`` and name the failure."""
        self._down_until = time.monotonic() + self.retry_after_s
        self._down_reason = str(exc)
        return KernelLoadError(KernelFailure.URZA_UNAVAILABLE, str(exc))

    def _fetch_record(self, kernel_id: str) -> KernelRecord:
        source = self._need_source()
        try:
            return source.record(kernel_id)
        except SourceUnavailable as exc:
            raise self._unavailable(exc) from None
        except KernelNotValidated as exc:
            raise KernelLoadError(KernelFailure.NOT_VALIDATED, str(exc)) from None
        except KernelNotFound as exc:
            raise KernelLoadError(KernelFailure.NOT_FOUND, str(exc)) from None
        except (ValueError, KeyError, TypeError) as exc:  # an answer that is not a kernel record
            raise KernelLoadError(KernelFailure.URZA_UNAVAILABLE, f"unreadable kernel record: {exc}") from None

    def _fetch_artifact(self, record: KernelRecord) -> bytes:
        source = self._need_source()
        try:
            data = source.artifact(record.kernel_id)
        except SourceUnavailable as exc:
            raise self._unavailable(exc) from None
        except KernelNotFound as exc:
            raise KernelLoadError(KernelFailure.NOT_FOUND, str(exc)) from None
        actual = hashlib.sha256(data).hexdigest()
        if actual != record.sha256:
            raise KernelLoadError(
                KernelFailure.CHECKSUM_MISMATCH,
                f"artifact of kernel {record.kernel_id} hashes to {actual}, its record says {record.sha256}",
            )
        self.cache.put(record.sha256, data)
        self.cache.remember(record)
        return data

    def _template(self, record: KernelRecord, data: bytes, shape: tuple[int, ...]) -> nn.Module:
        with self._lock:
            template = self._decoded.get(record.sha256)
            if template is not None:
                self._decoded.move_to_end(record.sha256)
                return template
        try:
            template = load_artifact(data)
        except CorruptArtifact as exc:
            self._discard(record)
            raise KernelLoadError(KernelFailure.CORRUPT_ARTIFACT, f"kernel {record.kernel_id}: {exc}") from None
        probe = torch.zeros((2, *shape))
        try:
            with torch.no_grad():
                out = template(probe)
        except Exception as exc:  # a program that cannot run on the slot's features does not fit it
            self._discard(record)
            raise KernelLoadError(
                KernelFailure.SHAPE_MISMATCH, f"kernel {record.kernel_id} does not run on {list(probe.shape)}: {exc}"
            ) from None
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(probe.shape):
            self._discard(record)
            got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise KernelLoadError(
                KernelFailure.SHAPE_MISMATCH,
                f"kernel {record.kernel_id} maps {list(probe.shape)} to {got}; a seed must keep the shape",
            )
        with self._lock:
            self._decoded[record.sha256] = template
            while len(self._decoded) > self.decoded_max:
                self._decoded.popitem(last=False)
        return template

    def _discard(self, record: KernelRecord) -> None:
        """Drop a kernel that proved unusable from the cache, so a repaired one is fetched next time."""
        self.cache.evict(record.sha256)
        self.cache.forget(record.kernel_id)
