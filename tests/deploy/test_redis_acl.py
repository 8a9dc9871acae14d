"""The Redis ACL users the compose file and the chart ship, against a real redis-server.

Redis is started by the deployments' own ``start.sh`` with their ``users.acl``
(:mod:`acl_redis`). Each service user is refused what is not its own (another
service's streams and keys, publishing on a stream it only consumes, admin
commands); the default user is off. Then the real Tamiyo, Tolaria and Nissa run
as those users: a job trains to its end, a poison entry is dead-lettered, Nissa
archives the run, and Redis' ``ACL LOG`` holds no refusal of any service.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from acl_redis import AclRedis
from redis_server import free_ports, redis_server_available

from esper.leyline import Envelope, TelemetryEvent, decode, encode
from esper.leyline import streams as ls
from esper.oona import ConsumerOptions, RedisBus, connect
from esper.oona.redis_bus import credentials_from_env

FIELD = ls.ENVELOPE_FIELD.encode()
TOKEN = "acl-test-token"

pytestmark = pytest.mark.skipif(not redis_server_available(), reason="no redis-server binary")


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    server = AclRedis(tmp_path_factory.mktemp("acl-redis")).start()
    try:
        yield server
    finally:
        server.stop()


# (user, command) pairs each user must be refused, with why.
DENIED = [
    ("tolaria", ("XADD", ls.CONTROL_COMMANDS, "*", "m", "x")),  # only Tamiyo commands
    ("tolaria", ("XADD", ls.CONTROL_JOBS, "*", "m", "x")),  # only the control API submits
    ("tolaria", ("XTRIM", ls.CONTROL_COMMANDS, "MAXLEN", "0")),  # it consumes commands, nothing more
    ("tolaria", ("GET", "esper:tamiyo:run:r1")),  # Tamiyo's run states
    ("tolaria", ("SET", "esper:own:tamiyo:lease:r1", "tolaria-x")),  # Tamiyo's leases
    ("tamiyo", ("XADD", ls.CONTROL_RESULTS, "*", "m", "x")),  # only Tolaria reports results
    ("tamiyo", ("XADD", ls.TELEMETRY_TRAINING, "*", "m", "x")),
    ("tamiyo", ("DEL", "esper:own:tolaria:lease:r1")),
    ("nissa", ("XADD", ls.TELEMETRY_TRAINING, "*", "m", "x")),  # Nissa only records
    ("nissa", ("XDEL", ls.TELEMETRY_TRAINING, "1-1")),
    ("nissa", ("XREADGROUP", "GROUP", "nissa", "n", "STREAMS", ls.CONTROL_JOBS, ">")),  # jobs are not its
    ("nissa", ("SET", "esper:tamiyo:runs", "x")),
    ("tezzeret", ("XREADGROUP", "GROUP", "tezzeret", "z", "STREAMS", ls.TELEMETRY_TRAINING, ">")),
    ("tezzeret", ("XADD", ls.COMPILE_REQUESTS, "*", "m", "x")),  # Tamiyo asks, Tezzeret answers
    ("tamiyo", ("FLUSHALL",)),
    ("tolaria", ("KEYS", "*")),
    ("nissa", ("CONFIG", "GET", "*")),
    ("tezzeret", ("ACL", "LIST")),
    ("tamiyo", ("CLIENT", "KILL", "ID", "1")),
    ("tolaria", ("SCRIPT", "FLUSH")),  # the other services' cached scripts
    ("tamiyo", ("FUNCTION", "FLUSH")),
]


@pytest.mark.parametrize(("user", "command"), DENIED, ids=[f"{u}-{' '.join(c[:2])}" for u, c in DENIED])
def test_a_service_user_is_refused_what_is_not_its_own(acl_redis: AclRedis, user: str, command: tuple) -> None:
    client = acl_redis.client(user)
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    finally:
        client.close()


def test_default_user_is_off_and_a_wrong_password_is_refused(acl_redis: AclRedis) -> None:
    anonymous = acl_redis.client(None)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    wrong = redis.Redis.from_url(acl_redis.url("tolaria").replace(acl_redis.passwords["tolaria"], "wrong"))
    with pytest.raises(redis.exceptions.AuthenticationError):
        wrong.ping()
    wrong.close()


def test_credentials_come_from_the_environment_unless_the_url_has_them() -> None:
    env = {"ESPER_REDIS_USERNAME": "nissa", "ESPER_REDIS_PASSWORD": "pw"}
    assert credentials_from_env("redis://h:1/0", env) == {"username": "nissa", "password": "pw"}
    assert credentials_from_env("redis://u:p@h:1/0", env) == {}
    assert credentials_from_env("redis://h:1/0", {}) == {}
    assert credentials_from_env("redis://h:1/0", {"ESPER_REDIS_PASSWORD": "pw"}) == {"password": "pw"}
    with pytest.raises(ValueError, match="ESPER_REDIS_PASSWORD"):
        credentials_from_env("redis://h:1/0", {"ESPER_REDIS_USERNAME": "nissa"})


def test_tezzeret_user_consumes_requests_publishes_results_and_dead_letters(
    acl_redis: AclRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tezzeret's whole bus life (group, read, ack, publish, dead-letter) as its user, through Oona."""
    for key, value in acl_redis.env("tezzeret").items():
        monkeypatch.setenv(key, value)
    admin = acl_redis.client()
    admin.acl_log_reset()  # the refusals above are logged too
    poison = admin.xadd(ls.COMPILE_REQUESTS, {FIELD: b"\x00 poison"}).decode()
    admin.xadd(ls.COMPILE_REQUESTS, {FIELD: encode(Envelope(payload=TelemetryEvent(kind="probe"), run_id="acl"))})
    seen: list[str] = []

    async def scenario() -> None:
        bus = RedisBus(connect(acl_redis.url()), owns_client=True)
        await bus.publish(ls.COMPILE_RESULTS, Envelope(payload=TelemetryEvent(kind="probe"), run_id="acl"))

        async def handle(envelope: Envelope, delivery: object) -> None:
            seen.append(envelope.run_id)

        sub = bus.subscribe(ls.COMPILE_REQUESTS, ls.GROUP_TEZZERET, "z1", handle, ConsumerOptions(block_ms=100))
        task = asyncio.create_task(sub.run())
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await sub.stop()
        await task
        await bus.aclose()

    asyncio.run(scenario())
    assert seen == ["acl"]
    assert admin.xlen(ls.COMPILE_RESULTS) >= 1
    assert admin.xpending(ls.COMPILE_REQUESTS, ls.GROUP_TEZZERET)["pending"] == 0
    assert (poison, ls.GROUP_TEZZERET) in _dead_letters(admin)
    assert _refusals(admin, "tezzeret") == []
    admin.close()


def _dead_letters(admin: redis.Redis) -> set[tuple[str, str]]:
    """(original entry id, group) of every dead letter."""
    letters = (decode(fields[FIELD]).payload for _, fields in admin.xrange(ls.DEAD_LETTER))
    return {(d.entry_id, d.group) for d in letters}


def _refusals(admin: redis.Redis, user: str) -> list[dict]:
    """ACL LOG entries of ``user`` (every refused command or key is logged there)."""
    return [e for e in admin.acl_log(count=1000) if e.get("username") == user]


@pytest.mark.timeout(300)
def test_the_real_services_train_and_dead_letter_as_their_users(acl_redis: AclRedis, tmp_path: Path) -> None:
    from esper.cli.stack import RestartPolicy, ServiceSpec, Stack, default_specs

    admin = acl_redis.client()
    admin.acl_log_reset()
    names = ("tamiyo", "tolaria", "nissa")
    ports = free_ports(names)
    specs = [ServiceSpec(s.name, s.module, s.port, s.args, acl_redis.env(s.name)) for s in default_specs(ports)]
    stack = Stack(
        specs,
        redis_url=acl_redis.url(),  # no credentials in the URL: each service has its own from env
        runs_dir=tmp_path / "runs",
        logs_dir=tmp_path / "logs",
        api_token=TOKEN,
        env={"ESPER_TOLARIA_TORCH_THREADS": "1", "PATH": os.environ["PATH"]},
        restart=RestartPolicy(max_restarts=0),
    ).start()
    try:
        stack.wait_ready(timeout_s=180)
        job = {"task": "mnist1d", "policy": "heuristic", "epochs": 3, "max_train_samples": 300, "lockstep": True}
        api = httpx.Client(base_url=stack["tamiyo"].url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
        answer = api.post("/runs", json={**job, "run_id": "acl-run"})
        assert answer.status_code == 202, answer.text
        poison = admin.xadd(ls.TELEMETRY_TRAINING, {FIELD: b"\x00 not msgpack"}).decode()
        deadline = time.monotonic() + 240
        while not api.get("/runs/acl-run").json().get("finished"):
            logs = "\n".join(f"--- {n}\n{s.log_tail(1500)}" for n, s in stack.services.items())
            assert time.monotonic() < deadline, f"the run did not finish as the ACL users:\n{logs}"
            time.sleep(1.0)
        status = api.get("/runs/acl-run").json()
        assert status["epoch"] == 3
        deadline = time.monotonic() + 30
        while {(poison, g) for g in (ls.GROUP_TAMIYO, ls.GROUP_NISSA)} - _dead_letters(admin):
            assert time.monotonic() < deadline, f"poison {poison} not dead-lettered: {_dead_letters(admin)}"
            time.sleep(0.5)
        archive = tmp_path / "runs" / "nissa" / "acl-run" / "events.jsonl"
        deadline = time.monotonic() + 30
        while not (archive.exists() and '"run_finished"' in archive.read_text()):
            assert time.monotonic() < deadline, "Nissa did not archive the run's end"
            time.sleep(0.5)
        for name in names:
            assert _refusals(admin, name) == [], f"{name} was refused by its ACL"
            assert stack[name].pid is not None
        api.close()
    finally:
        stack.stop()
        admin.close()
