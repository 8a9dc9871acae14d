"""A private ``redis-server`` started the way the compose file and the chart start theirs.

``deploy/k8s/esper/files/redis/start.sh`` renders ``users.acl`` with passwords from the
environment and execs ``redis-server --aclfile``; :class:`AclRedis` runs that same script on a
free loopback port, so a test exercises the exact ACL users the deployments ship.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[2]
ACL_DIR = ROOT / "deploy" / "k8s" / "esper" / "files" / "redis"
#: Service users in users.acl (Urza uses no Redis) and the operators' admin.
USERS = ("admin", "tamiyo", "tolaria", "nissa", "tezzeret")


def password_var(user: str) -> str:
    return f"REDIS_{user.upper()}_PASSWORD"


class AclRedis:
    """redis-server with Esper's ACL users, random passwords, no persistence."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.passwords = {user: secrets.token_urlsafe(16) for user in USERS}
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    def url(self, user: str | None = None) -> str:
        """``redis://user:password@127.0.0.1:port/0``, or no credentials at all when ``user`` is None."""
        who = f"{user}:{self.passwords[user]}@" if user else ""
        return f"redis://{who}127.0.0.1:{self.port}/0"

    def env(self, user: str) -> dict[str, str]:
        """What a service of ``user`` is given: its username and password, apart from the URL."""
        return {"ESPER_REDIS_USERNAME": user, "ESPER_REDIS_PASSWORD": self.passwords[user]}

    def client(self, user: str | None = "admin") -> redis.Redis:
        return redis.Redis.from_url(self.url(user), socket_timeout=5.0, socket_connect_timeout=2.0)

    def start(self, timeout_s: float = 10.0) -> AclRedis:
        from redis_server import free_port

        binary = os.environ.get("ESPER_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        env = {
            **os.environ,
            **{password_var(u): p for u, p in self.passwords.items()},
            "ESPER_REDIS_ACL_FILE": str(self.directory / "users.acl"),
            "PATH": f"{Path(binary).parent}:{os.environ.get('PATH', '')}",
        }
        args = ["sh", str(ACL_DIR / "start.sh"), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.directory), "--save", "", "--appendonly", "no"]
        args += ["--logfile", str(self.directory / "redis.log")]
        self._process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        admin = self.client()
        try:
            while True:
                if self._process.poll() is not None:
                    err = self._process.stderr.read().decode() if self._process.stderr else ""
                    raise RuntimeError(f"start.sh exited {self._process.returncode}: {err}")
                try:
                    admin.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            admin.close()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
