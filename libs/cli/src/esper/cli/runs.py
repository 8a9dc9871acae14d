"""``esper runs ...``: the control API from the command line.

Talks to Tamiyo's control API at ``--api`` (default ``$ESPER_API_URL`` or
http://127.0.0.1:8700) with the bearer token in ``$ESPER_API_TOKEN`` (reads
fall back to the read-only ``$ESPER_API_READ_TOKEN`` when it is unset). A
refused request prints the status code and the API's reason and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

from esper.leyline import RUN_ACTIONS

DEFAULT_API = "http://127.0.0.1:8700"
ADAPT_ACTIONS = ("germinate", "advance", "cull", "fossilize")


class ApiRefusal(RuntimeError):
    """The API answered with an error status; the message holds the status and its reason."""


def _config_item(text: str) -> tuple[str, bool | int | float | str]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (value {text!r})")
    value: bool | int | float | str = raw
    if raw in ("true", "false"):
        value = raw == "true"
    else:
        for kind in (int, float):
            try:
                value = kind(raw)
                break
            except ValueError:
                continue
    return key, value


def add_parser(sub: Any) -> None:
    """Register ``runs`` and its subcommands on the top-level subparsers ``sub``."""
    runs = sub.add_parser("runs", help="list, inspect and steer runs through the control API")
    runs.add_argument("--api", default=os.environ.get("ESPER_API_URL", DEFAULT_API), help="control API base URL")
    runs.add_argument("--json", action="store_true", help="print the API's JSON answer")
    cmd = runs.add_subparsers(dest="runs_command", required=True)

    cmd.add_parser("list", help="every run Tamiyo knows")
    show = cmd.add_parser("show", help="a run's status: slots, recent decisions")
    show.add_argument("run")

    submit = cmd.add_parser("submit", help="submit a training job")
    submit.add_argument("--run-id", default=None)
    submit.add_argument("--task", default=None)
    submit.add_argument("--policy", default=None)
    submit.add_argument("--epochs", type=int, default=None)
    submit.add_argument("--steps-per-epoch", type=int, default=None, help="an epoch's steps (default: one pass)")
    submit.add_argument("--lengthen-settled", action=argparse.BooleanOptionalAction, default=None)
    submit.add_argument("--host-wait-steps", type=int, default=None)
    submit.add_argument(
        "--isolate-seeds",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="default: seeds learn jointly with the host",
    )
    submit.add_argument("--seed", type=int, default=None)
    submit.add_argument("--data-dir", default=None)
    submit.add_argument("--max-train-samples", type=int, default=None)
    submit.add_argument("--host-channels", type=int, default=None)
    submit.add_argument("--batch-size", type=int, default=None)
    submit.add_argument("--lr", type=float, default=None)
    submit.add_argument("--lr-schedule", default=None)
    submit.add_argument("--precision", default=None, help="fp32 (default) or bf16 (bfloat16 autocast)")
    submit.add_argument("--param-budget", type=int, default=None)
    submit.add_argument("--lockstep", action=argparse.BooleanOptionalAction, default=None, help="default: lockstep")
    submit.add_argument("--lockstep-timeout-ms", type=int, default=None)

    for action in sorted(RUN_ACTIONS):
        control = cmd.add_parser(action.value, help=f"{action.value} a run")
        control.add_argument("run")
        control.add_argument("--reason", default="")

    adapt = cmd.add_parser("adapt", help="force an adaptation (passes the safety monitor unless --override)")
    adapt.add_argument("run")
    adapt.add_argument("--action", required=True, choices=ADAPT_ACTIONS)
    adapt.add_argument("--slot", required=True)
    adapt.add_argument("--blueprint", default=None)
    adapt.add_argument("--config", type=_config_item, action="append", default=[], metavar="KEY=VALUE")
    adapt.add_argument("--reason", default="")
    adapt.add_argument("--override", action="store_true", help="bypass the safety monitor")

    policy = cmd.add_parser("policy", help="switch a run's policy (a name 'esper runs policies' lists)")
    policy.add_argument("run")
    policy.add_argument("name")
    cmd.add_parser("policies", help="the policies runs may be given: named, and learned ones in ESPER_POLICY_DIR")


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    token = os.environ.get("ESPER_API_TOKEN") or (os.environ.get("ESPER_API_READ_TOKEN") if method == "GET" else None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = args.api.rstrip("/") + path
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=30.0)
    except httpx.TransportError as exc:
        raise ApiRefusal(f"cannot reach the control API at {args.api}: {exc}") from None
    if response.status_code >= 400:
        raise ApiRefusal(f"{method} {path} answered {response.status_code}: {_reason(response)}")
    return response.json()


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict) and isinstance(body.get("reason"), str):
        return str(body["reason"])
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):  # FastAPI validation errors: name each field, and the value refused
        return "; ".join(_field_error(e) for e in detail)
    return str(detail if detail is not None else body)


def _field_error(error: dict[str, Any]) -> str:
    """``field: message (value V)`` from one FastAPI validation error (no value where the field was missing)."""
    text = f"{'.'.join(str(p) for p in error.get('loc', [])[1:])}: {error.get('msg')}"
    return text if "input" not in error or error.get("type") == "missing" else f"{text} (value {error['input']!r})"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _state(run: dict[str, Any]) -> str:
    for flag in ("finished", "stopped", "paused"):
        if run.get(flag):
            return flag
    return "running" if run.get("epoch") is not None else "submitted"


def format_list(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "no runs"
    rows = [("RUN", "TASK", "POLICY", "EPOCH", "VAL ACC", "STATE")]
    for r in runs:
        epoch = "-" if r["epoch"] is None else f"{r['epoch']}/{r['epochs']}"
        rows.append((r["run_id"], r["task"], r["policy"], epoch, _pct(r["val_accuracy"]), _state(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def format_status(run: dict[str, Any], decisions: int = 10) -> str:
    epoch = "-" if run["epoch"] is None else f"{run['epoch']}/{run['epochs']}"
    lines = [
        f"run {run['run_id']}  task {run['task']}  policy {run['policy']}  epoch {epoch}  {_state(run)}",
        f"  val acc {_pct(run['val_accuracy'])}  train acc {_pct(run['train_accuracy'])}  "
        f"val loss {run['val_loss'] if run['val_loss'] is not None else '-'}  params {run['params_total'] or '-'}",
    ]
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
    for s in run["slots"]:
        seed = f" {s['blueprint']} ({s['seed_id']}) alpha {s['alpha']:.2f}" if s["seed_id"] else ""
        lines.append(f"  slot {s['slot_id']}: {s['stage']}{seed}")
    recent = [d for d in run["decisions"] if d["action"] != "wait"][-decisions:]
    if recent:
        lines.append("  decisions:")
    for d in recent:
        where = f" {d['slot_id']}" if d["slot_id"] else ""
        what = f" {d['blueprint']}" if d["blueprint"] else ""
        verdict = "accepted" if d["accepted"] else f"REJECTED ({d['rejection_reason']})"
        result = f" -> {d['result']}" if d["result"] else ""
        confidence = "" if d["confidence"] is None else f" conf {d['confidence']:.2f}"
        lines.append(
            f"    e{d['epoch']} {d['action']}{where}{what} by {d['policy']}{confidence}: {d['reason']} "
            f"[{verdict}{result}]"
        )
    return "\n".join(lines)


def format_policies(policies: list[dict[str, Any]]) -> str:
    rows = [("POLICY", "KIND", "AVAILABLE", "FILE")]
    rows += [(p["name"], p["kind"], "yes" if p["available"] else "no", p["path"] or "-") for p in policies]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines += [f"{p['name']}: {p['reason']}" for p in policies if p.get("reason")]
    return "\n".join(lines)


def _submit_body(args: argparse.Namespace) -> dict[str, Any]:
    names = ["run_id", "task", "policy", "epochs", "steps_per_epoch", "lengthen_settled", "host_wait_steps"]
    names += ["isolate_seeds", "seed", "data_dir", "max_train_samples", "host_channels"]
    names += ["batch_size", "lr", "lr_schedule", "precision", "param_budget", "lockstep", "lockstep_timeout_ms"]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def runs(args: argparse.Namespace) -> int:
    """Run one ``esper runs`` subcommand; 0 on success, 1 when the API refused."""
    command = args.runs_command
    try:
        if command == "list":
            answer = _call(args, "GET", "/runs")
            text = format_list(answer)
        elif command == "show":
            answer = _call(args, "GET", f"/runs/{args.run}")
            text = format_status(answer)
        elif command == "submit":
            answer = _call(args, "POST", "/runs", _submit_body(args))
            text = f"submitted {answer['run_id']}"
        elif command in RUN_ACTIONS:
            answer = _call(args, "POST", f"/runs/{args.run}/{command}", {"reason": args.reason})
            text = f"{command} sent to {args.run} (command {answer['command_id']})"
        elif command == "policies":
            answer = _call(args, "GET", "/policies")
            text = format_policies(answer)
        elif command == "adapt":
            body = {"action": args.action, "slot_id": args.slot, "reason": args.reason, "override": args.override}
            if args.blueprint:
                body["blueprint"] = args.blueprint
            if args.config:
                body["blueprint_config"] = dict(args.config)
            answer = _call(args, "POST", f"/runs/{args.run}/adaptations", body)
            text = f"{args.action} {args.slot} accepted: command {answer['command_id']}"
        else:
            answer = _call(args, "PUT", f"/runs/{args.run}/policy", {"policy": args.name})
            text = f"{args.run} now uses policy {answer['policy']}"
    except ApiRefusal as exc:
        print(f"esper runs {command}: error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2) if args.json else text)
    return 0
