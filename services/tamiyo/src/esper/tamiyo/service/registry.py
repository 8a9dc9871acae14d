"""The policies the Tamiyo service can give a run, by name: the named ones and a directory of learned ones.

``--policy-dir`` (``ESPER_POLICY_DIR``) holds learned policy files: ``DIR/NAME.pt``
(what ``esper simic train`` writes as ``policy.pt``) is the policy ``NAME``.
The directory is read at each lookup, so a file copied there is usable without
a restart, and every replica must see the same directory. The named policies
(``heuristic``, ``heuristic-per-slot``, ``none``) and the learned policies
that ship with Esper (``learned``, :data:`~esper.tamiyo.policies.SHIPPED_POLICIES`)
win over a file of the same name. Only registered names load: neither a job
nor a switch can make the service read another path.

A learned policy needs the ``gnn`` extra (torch, torch_geometric), which the
service's own install does not bring (it is torch-free: tests/architecture).
Without it the policy is still listed, ``available: false`` with the reason,
and :meth:`PolicyRegistry.check` refuses it (:class:`PolicyRefused`, the API's
422) naming the policy and the extra; the service and the runs' current
policies are untouched. Whether torch is there is asked of the import system
(``find_spec``) without importing it; the policy file itself is read only when
a run needs it.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from esper.leyline import TrainingJob
from esper.tamiyo.policies import (
    GNN_EXTRA,
    POLICIES,
    POLICY_FILE_SUFFIX,
    SHIPPED_POLICIES,
    PolicyUnavailable,
    load_policy_file,
    make_policy,
)
from esper.tamiyo.policy import Policy

#: The variable naming the directory of learned policies.
POLICY_DIR_ENV = "ESPER_POLICY_DIR"
#: A registered policy's name (a file ``NAME.pt`` with another name is not listed).
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_NAME = re.compile(NAME_PATTERN)
#: What a learned policy imports.
GNN_MODULES = ("torch", "torch_geometric")


class PolicyRefused(ValueError):
    """A policy a run cannot be given: unknown, its extra missing, or its file unreadable (the API's 422)."""


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """One registered policy as the API lists it."""

    name: str
    kind: str  # "named" or "learned"
    path: str | None = None
    available: bool = True
    reason: str | None = None


def missing_gnn_extra() -> str | None:
    """Why a learned policy cannot load in this process (None when torch and torch_geometric are importable)."""
    for module in GNN_MODULES:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError) as exc:
            return f"{module} cannot be imported ({exc})"
        if not found:
            return f"{module} is not installed"
    return None


class PolicyRegistry:
    """Named policies plus the learned ones in ``directory`` (see the module docstring).

    It is a collection of names (``in``, iteration, ``len``) and the
    collector's policy factory (:meth:`make`).
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory else None

    @classmethod
    def from_env(cls) -> PolicyRegistry:
        """The registry of ``$ESPER_POLICY_DIR`` (named policies only when it is unset)."""
        return cls(os.environ.get(POLICY_DIR_ENV) or None)

    def files(self) -> dict[str, Path]:
        """Learned policies by name: the shipped ones (:data:`SHIPPED_POLICIES`), then the directory's,
        read now (a missing directory holds none; a file cannot take a named or shipped policy's name)."""
        found = {name: path for name, path in SHIPPED_POLICIES.items() if path.is_file()}
        if self.directory is None or not self.directory.is_dir():
            return found
        for path in sorted(self.directory.glob(f"*{POLICY_FILE_SUFFIX}")):
            name = path.name[: -len(POLICY_FILE_SUFFIX)]
            if _NAME.match(name) and name not in POLICIES and name not in found and path.is_file():
                found[name] = path
        return found

    def names(self) -> tuple[str, ...]:
        return (*POLICIES, *self.files())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in POLICIES or (bool(_NAME.match(name)) and name in self.files()))

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def entries(self) -> list[PolicyEntry]:
        """Every registered policy, learned ones with their file and whether this process can load them."""
        missing = missing_gnn_extra() if self.files() else None
        out = [PolicyEntry(name, "named") for name in POLICIES]
        for name, path in self.files().items():
            reason = None if missing is None else self._needs_extra(name, missing)
            out.append(PolicyEntry(name, "learned", str(path), missing is None, reason))
        return out

    def check(self, name: str) -> None:
        """:class:`PolicyRefused` unless ``name`` is registered and its dependencies are importable
        (cheap: the file is not read)."""
        if name in POLICIES:
            return
        if name not in self:
            raise PolicyRefused(f"field 'policy': unknown policy {name!r} (known: {', '.join(self.names())})")
        missing = missing_gnn_extra()
        if missing is not None:
            raise PolicyRefused(self._needs_extra(name, missing))

    def make(self, name: str, job: TrainingJob) -> Policy:
        """A fresh policy ``name`` for ``job`` (the collector's factory); :class:`PolicyRefused` for an
        unknown name, a missing extra or an unreadable file."""
        if name in POLICIES:
            return make_policy(name, job)
        path = self.files().get(name)
        if path is None:
            raise PolicyRefused(f"field 'policy': unknown policy {name!r} (known: {', '.join(self.names())})")
        try:
            return load_policy_file(str(path), job)
        except PolicyUnavailable as exc:
            raise PolicyRefused(self._needs_extra(name, str(exc))) from None
        except ValueError as exc:
            raise PolicyRefused(f"policy {name!r}: {exc}") from None

    def _needs_extra(self, name: str, why: str) -> str:
        return (
            f"field 'policy': policy {name!r} is a learned policy and needs the gnn extra "
            f"(pip install '{GNN_EXTRA}'), which this Tamiyo service lacks: {why}"
        )
