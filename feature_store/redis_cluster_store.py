"""The Redis Cluster store: one pipelined round trip per node touched, the nodes concurrently.

URL: ``redis+cluster://[user:password@]host:port/0`` (``rediss+cluster://`` for TLS), naming
any one node: the client discovers the others and the slot map from it. A cluster has one
database, so the path is ``/0`` or empty.

Keys are those of a single server (`feature_store.codec.row_key`): the entity's hash tag puts
all its views in one slot. A read groups its keys by slot (one ``MGET`` per slot, since a
multi-key command must stay in one slot) and the slots by node; each node gets all its
``MGET``s as one pipeline, and the nodes are asked at once. A write does the same with
``MSET``s of at most `MSET_KEYS` keys.

redis-py's own cluster pipeline groups by node too, but fails the whole pipeline when one node
is down; here each node's round trip succeeds or fails alone, so a node that is down fails only
the reads of the keys it holds (`PartlyUnavailable`), and the other nodes keep serving.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import ClassVar, cast
from urllib.parse import urlsplit

from redis.asyncio.cluster import ClusterNode, NodesManager, PipelineCommand, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    RedisError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from feature_store.errors import FeatureStoreError, PartlyUnavailable, StoreUnavailable
from feature_store.redis_store import MSET_KEYS, failure_reason
from feature_store.store import OnlineStore, display_url

SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}

# Round trips one command may take. A slot being migrated costs at most four: MGET (TRYAGAIN:
# its keys are split between the two nodes), then one key per MGET (ASK), then ASKING + MGET
# on the importing node; a slot that moved costs two (MOVED, then the new owner). The rest
# are TRYAGAIN retries of a single key, which Redis does not send today, spaced out.
_ATTEMPTS = 8
_TRYAGAIN_DELAY_S = 0.005  # doubled after each attempt, up to the cap
_TRYAGAIN_DELAY_CAP_S = 0.1

# Errors that say a node or slot cannot serve now (the node may come back), as opposed to a
# refusal (a missing ACL permission, say) that retrying would not change.
_UNAVAILABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ClusterDownError,
    TryAgainError,
    AskError,  # MovedError too: redirects that outlasted the attempts
    RedisClusterException,  # the slot is not covered, or no node answered discovery
    OSError,
)


@dataclass(slots=True, eq=False)
class _SlotCommand:
    """One MGET or MSET on keys of one slot, and where it stands."""

    slot: int
    name: str
    args: list[str | bytes]  # per key, the key (MGET) or the key and its value (MSET)
    width: int  # arguments per key
    # The node an ASK sent it to, for the next attempt only (ASKING, then the command).
    ask: ClusterNode | None = None
    reply: object = None  # the reply, or the error that failed it
    parts: list[_SlotCommand] = field(default_factory=list)  # one per key, once split

    @property
    def keys(self) -> int:
        return len(self.args) // self.width

    def split(self) -> list[_SlotCommand]:
        """One command per key: while a slot's keys are split between two nodes, a multi-key
        command gets TRYAGAIN, but a single key is served or redirected (ASK)."""
        w = self.width
        self.parts = [
            _SlotCommand(self.slot, self.name, self.args[i : i + w], w)
            for i in range(0, len(self.args), w)
        ]
        return self.parts

    def join(self) -> None:
        """The reply of a split command: its parts' replies (MGET) or the first error."""
        replies = [part.reply for part in self.parts]
        error = next((reply for reply in replies if not isinstance(reply, list | bool)), None)
        if error is not None:
            self.reply = error
        elif self.name == "MGET":
            self.reply = [blob for reply in replies for blob in cast(list[object], reply)]
        else:
            self.reply = all(replies)


def client_url(url: str) -> str:
    """The URL redis-py's RedisCluster.from_url takes for ``redis+cluster://host:port/0``
    (``rediss+cluster://`` with TLS): any one node, from which the client finds the others."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{display_url(url)!r}: a cluster URL starts with redis+cluster://")
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"{display_url(url)!r}: a Redis Cluster has database 0 only (path /0)")
    return parts._replace(scheme=SCHEMES[parts.scheme], path="/0").geturl()


class RedisClusterStore(OnlineStore):
    """Packed rows in a Redis Cluster (``redis+cluster://host:port/0``).

    Freshness is read-time, as in `RedisStore`. A node that is down costs the reads of its
    keys about `socket_timeout` at most (at once when the connection is refused) and raises
    StoreUnavailable for them only; the connections to it reconnect when it answers again, and
    a topology refresh is asked for, so a replica promoted in its place is found.
    """

    kind: ClassVar[str] = "redis-cluster"

    def __init__(self, url: str, *, socket_timeout: float = 1.0, max_connections: int = 64) -> None:
        self.url = display_url(url)
        self._client = RedisCluster.from_url(
            client_url(url),
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            max_connections=max_connections,  # per node
            # The slots of a node that is down stay unserved; the others serve on.
            require_full_coverage=False,
        )

    async def _fetch(self, keys: list[str]) -> list[bytes | None]:
        slots: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            slots.setdefault(key_slot(key.encode()), []).append(index)
        commands = [
            _SlotCommand(slot, "MGET", [keys[i] for i in indices], 1)
            for slot, indices in slots.items()
        ]
        await self._execute(commands)
        blobs: list[bytes | None] = [None] * len(keys)
        unreached: list[int] = []
        failure: Exception | None = None
        for command, indices in zip(commands, slots.values(), strict=True):
            if isinstance(command.reply, list):
                for index, blob in zip(indices, command.reply, strict=True):
                    blobs[index] = blob
            else:
                failure = self._failure(command.reply)
                if not isinstance(failure, StoreUnavailable):
                    raise failure  # a refusal (an ACL, say) fails the read, as on one server
                unreached.extend(indices)
        if failure is not None:
            raise PartlyUnavailable(str(failure), blobs, unreached) from failure.__cause__
        return blobs

    async def _store(self, items: list[tuple[str, bytes]]) -> None:
        slots: dict[int, list[str | bytes]] = {}
        for key, blob in items:
            slots.setdefault(key_slot(key.encode()), []).extend((key, blob))
        commands = [
            _SlotCommand(slot, "MSET", args[start : start + 2 * MSET_KEYS], 2)
            for slot, args in slots.items()
            for start in range(0, len(args), 2 * MSET_KEYS)
        ]
        await self._execute(commands)
        for command in commands:
            if isinstance(command.reply, BaseException):
                # Writes are idempotent: the caller retries the whole batch.
                raise self._failure(command.reply)

    async def ping(self) -> None:
        await self._nodes()
        replies = await asyncio.gather(
            *(node.execute_command("PING") for node in self._client.get_primaries()),
            return_exceptions=True,
        )
        for reply in replies:
            if isinstance(reply, BaseException):
                raise self._failure(reply)

    async def close(self) -> None:
        await self._client.aclose()

    async def _nodes(self) -> NodesManager:
        """The slot map: discovered on first use, refreshed when an error asked for it."""
        try:
            await self._client.initialize()
        except (RedisError, RedisClusterException, OSError) as exc:
            raise self._failure(exc) from exc
        return self._client.nodes_manager

    async def _execute(self, commands: list[_SlotCommand]) -> None:
        """Send every command to the node of its slot, each node's as one pipeline, the nodes
        at once; follow MOVED and ASK, split or retry on TRYAGAIN; leave each command's reply
        (or error) in it."""
        todo = commands
        split: list[_SlotCommand] = []
        for attempt in range(_ATTEMPTS):
            nodes = await self._nodes()
            by_node: dict[str, tuple[ClusterNode, list[_SlotCommand]]] = {}
            for command in todo:
                try:
                    node = command.ask or nodes.get_node_from_slot(command.slot)
                except RedisClusterException as exc:  # the slot has no node in the map
                    command.reply = exc
                    self._client._request_refresh()  # it may have one when a node is back
                    continue
                by_node.setdefault(node.name, (node, []))[1].append(command)
            if len(by_node) == 1:  # no task to make, no loop turn: a read of one entity
                await self._send(*next(iter(by_node.values())))
            else:
                await asyncio.gather(*(self._send(node, sent) for node, sent in by_node.values()))
            todo = []
            retry_later = False
            for command in (command for _, sent in by_node.values() for command in sent):
                reply = command.reply
                command.ask = None
                if isinstance(reply, MovedError):  # before AskError: a MovedError is one
                    # The slot has a new owner for good: patch the map for every later read.
                    await nodes.move_slot(reply)
                elif isinstance(reply, AskError):
                    # Only this command goes to the importing node, this once.
                    command.ask = self._ask_node(nodes, reply)
                elif isinstance(reply, TryAgainError) and command.keys > 1:
                    split.append(command)
                    todo.extend(command.split())
                    continue
                elif isinstance(reply, TryAgainError):
                    retry_later = True
                else:
                    continue
                todo.append(command)
            if not todo:
                break
            if retry_later:
                await asyncio.sleep(min(_TRYAGAIN_DELAY_S * 2**attempt, _TRYAGAIN_DELAY_CAP_S))
        for command in split:
            command.join()

    async def _send(self, node: ClusterNode, commands: list[_SlotCommand]) -> None:
        """One round trip to `node` with every command, each answered or failed alone."""
        pipeline: list[PipelineCommand] = []
        for command in commands:
            if command.ask is not None:
                pipeline.append(PipelineCommand(len(pipeline), "ASKING"))
            pipeline.append(PipelineCommand(len(pipeline), command.name, *command.args))
        self._round_trip()
        try:
            await node.execute_pipeline(pipeline)
        except (RedisError, OSError) as exc:  # not sent: the node is down or unreachable
            for command in commands:
                command.reply = exc
        else:
            replies = (sent.result for sent in pipeline if sent.args[0] != "ASKING")
            for command, reply in zip(commands, replies, strict=True):
                command.reply = reply
        if any(isinstance(c.reply, (RedisConnectionError, RedisTimeoutError)) for c in commands):
            # Its slots may have moved to a replica promoted in its place: the next command
            # refreshes the slot map first, as redis-py's own commands do after such an error.
            self._client._request_refresh(last_failed_node_name=node.name)

    @staticmethod
    def _ask_node(nodes: NodesManager, error: AskError) -> ClusterNode:
        host, port = nodes.remap_host_port(error.host, error.port)
        node = nodes.get_node(host=host, port=port)
        if node is None:  # a node the slot map does not know yet
            node = ClusterNode(host, port, "primary", **nodes.connection_kwargs)
            nodes.set_nodes(nodes.nodes_cache, {node.name: node})
        return node

    def _failure(self, error: object) -> FeatureStoreError:
        """The store's error for a redis-py one; no key or value of the command in it."""
        exc: FeatureStoreError
        if isinstance(error, _UNAVAILABLE):
            exc = StoreUnavailable(f"feature store {self.url} unavailable: {_reason(error)}")
        else:
            exc = FeatureStoreError(f"feature store {self.url}: {_reason(error)}")
        if isinstance(error, BaseException):
            exc.__cause__ = error
        return exc


def _reason(error: object) -> str:
    if isinstance(error, TryAgainError | AskError):
        return "a slot migration outlasted the retries"
    if isinstance(error, Exception):
        return failure_reason(error)
    return f"unexpected reply {type(error).__name__}"
