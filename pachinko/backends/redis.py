"""RedisBackend: rooms, users and broadcasts across processes (redis-py asyncio).

Pub/Sub channels (``{prefix}:ch:...``) carry frames; each process subscribes
only to the rooms and users it has local members of, to its own node channel
(``send_to_connection``) and to the ``all`` channel. A broadcast is one
``PUBLISH`` whatever the number of recipients. A frame on the wire is
``origin-node \\n extra \\n kind \\n frame`` (``extra``: comma-joined excluded
ids, or the target connection id on a node channel; ``kind``: ``t`` for a
text frame as is, ``b`` for a binary frame in base64); a process skips its
own frames (it already delivered them locally). With tracing on, the origin
is followed by a space and the publisher's W3C ``traceparent`` (absent when
off; a process that does not trace ignores it).

Membership and presence are cluster-wide keys: ``{prefix}:members:{room}``
and ``{prefix}:users:{user}`` (hashes connection id → node id), the room
index ``{prefix}:rooms`` (a sorted set, for prefix queries) and
``{prefix}:alive:{node}``, refreshed every ``heartbeat`` seconds with a TTL
of ``presence_ttl``. Entries of nodes whose key expired are ignored and
cleaned up when read: the members of a process that died vanish within
``presence_ttl`` seconds.

Room history (rooms whose policy keeps some): each room has a hash
``{prefix}:hist:{room}`` (``e``: its epoch, ``o``: its last offset) and a
stream ``{prefix}:stream:{room}`` whose entry IDs are ``0-<offset>`` (so an
XRANGE by offset is exact and a trimmed entry is seen missing), each entry
holding the frame (``f``) and, for rooms with a TTL, Redis's time in ms
(``t``). One script per broadcast (EVALSHA: one round trip) takes the next
offset, starts a new epoch if the hash is gone (Redis flushed or expired:
the stream is dropped with it), XADDs with ``MAXLEN`` and PUBLISHes the
positioned frame (kind ``p<epoch>:<offset>``): the stream and live delivery
agree, and a broadcast either did all of it or nothing. Every process,
this one included, delivers positioned frames from its subscription, in the
one order Redis published them.

Delivery is at-most-once: Pub/Sub does not store frames, so a process that
is disconnected from Redis misses what was published meanwhile. A publish
while Redis is unreachable raises :class:`~pachinko.errors.BackendUnavailable`.
A lost connection is logged at ERROR and retried with exponential backoff;
on reconnection the process resubscribes and, if Redis lost its keys (a
restart), writes its presence and memberships again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Collection
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import BackendUnavailable, ConfigError, PachinkoError
from ..rooms import Position, RoomPolicy
from .base import BackendHost, ConnectionBackend, HistoryRead

__all__ = ["RedisBackend"]

logger = logging.getLogger("pachinko")

_OPTIONS = {"prefix": str, "presence_ttl": float, "heartbeat": float}

# Remove members and drop the room from the index once it is empty (atomic).
_LEAVE = """
for i = 1, #ARGV - 1 do redis.call('HDEL', KEYS[1], ARGV[i]) end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('ZREM', KEYS[2], ARGV[#ARGV]) end
return 0
"""

# Count the user's live connections (entries of dead nodes are removed) and
# record the new one only if there are fewer than the limit (atomic).
# KEYS[1]: the user's hash; ARGV: connection id, node, limit, alive-key prefix.
_CLAIM = """
local entries = redis.call('HGETALL', KEYS[1])
local alive = {}
local live = 0
for i = 1, #entries, 2 do
  local cid, node = entries[i], entries[i + 1]
  if cid ~= ARGV[1] then
    local ok = alive[node]
    if ok == nil then
      ok = redis.call('EXISTS', ARGV[4] .. node) == 1
      alive[node] = ok
    end
    if ok then live = live + 1 else redis.call('HDEL', KEYS[1], cid) end
  end
end
if live >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


# Give a broadcast to a history room its position, keep it, publish it (atomic).
# KEYS[1]: the room's hash (e: epoch, o: offset); KEYS[2]: its stream.
# ARGV: 1 epoch if new, 2 maxlen, 3 ttl ms (0: none), 4 hash ttl ms,
# 5 channel, 6 header before the kind (node \n extra), 7 head, 8 tail.
_PUBLISH_KEPT = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'o', 1)
local position = epoch .. ':' .. offset
local frame = ARGV[7] .. position .. ARGV[8]
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. offset, 'f', frame, 't', ms)
  redis.call('PEXPIRE', KEYS[2], ttl)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. offset, 'f', frame)
end
local receivers = redis.call('PUBLISH', ARGV[5], ARGV[6] .. '\\np' .. position .. '\\n' .. frame)
return {epoch, offset, receivers}
"""

# Read a history room's offset and kept entries (one snapshot); start its
# history if it has none, so the client learns a position (atomic).
# KEYS as above; ARGV: 1 epoch if new, 2 's' (since) or 'l' (last), 3 the
# offset or count, 4 hash ttl ms (0: none).
_READ_KEPT = """
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
end
local offset = redis.call('HGET', KEYS[1], 'o')
local entries
if ARGV[2] == 's' then
  entries = redis.call('XRANGE', KEYS[2], '(0-' .. ARGV[3], '+')
else
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[3])
end
local now = redis.call('TIME')
return {epoch, offset, entries, now[1], now[2]}
"""

# A history room whose last broadcast is older than its TTL keeps its epoch
# and offset this much longer (a client that missed nothing still recovers).
_EPOCH_GRACE_MS = 86_400_000


# Presence: per room, P = {prefix}:presence:{room} (connection id -> user),
# C = {prefix}:pcount:{room} (user -> its connections in the room),
# U = {prefix}:pinfo:{room} (user -> info JSON: every listed user),
# L = {prefix}:pleaving:{room} (user -> node confirming its leave), and the
# index R = {prefix}:prooms (rooms with presence entries). One script per
# step: of several processes exactly one sees a user arrive or leave.

# KEYS P C U L R; ARGV conn, user, info, room. 1: the user arrived.
_P_JOIN = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[5], ARGV[4])
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) ~= 1 then return 0 end
if redis.call('HDEL', KEYS[4], ARGV[2]) == 1 then return 0 end
return 1
"""

# KEYS P C L; ARGV conn, node. 1: it was the user's last connection (now leaving).
_P_LEAVE = """
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
if redis.call('HINCRBY', KEYS[2], user, -1) > 0 then return 0 end
redis.call('HDEL', KEYS[2], user)
redis.call('HSET', KEYS[3], user, ARGV[2])
return 1
"""

# KEYS C U L R; ARGV user, room. The info of a user that left, or nil.
_P_CONFIRM = """
if redis.call('HDEL', KEYS[3], ARGV[1]) == 0 then return false end
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return false end
local info = redis.call('HGET', KEYS[2], ARGV[1]) or '{}'
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('HLEN', KEYS[2]) == 0 then redis.call('SREM', KEYS[4], ARGV[2]) end
return info
"""

# KEYS P C U L R; ARGV alive-key prefix, room. Removes the connections of
# dead nodes, and ends the leaves of users whose last connection was one of
# them or whose confirming node died; returns {user, info, ...} of those.
_P_REAP = """
local alive = {}
local function live(node)
  local ok = alive[node]
  if ok == nil then
    ok = redis.call('EXISTS', ARGV[1] .. node) == 1
    alive[node] = ok
  end
  return ok
end
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local cid, user = entries[i], entries[i + 1]
  local node = string.match(cid, '^([^.]+)%.')
  if node and not live(node) then
    redis.call('HDEL', KEYS[1], cid)
    if redis.call('HINCRBY', KEYS[2], user, -1) <= 0 then
      redis.call('HDEL', KEYS[2], user)
      redis.call('HSET', KEYS[4], user, '')
    end
  end
end
local gone = {}
local leaving = redis.call('HGETALL', KEYS[4])
for i = 1, #leaving, 2 do
  local user, node = leaving[i], leaving[i + 1]
  if node == '' or not live(node) then
    redis.call('HDEL', KEYS[4], user)
    if redis.call('HEXISTS', KEYS[2], user) == 0 then
      gone[#gone + 1] = user
      gone[#gone + 1] = redis.call('HGET', KEYS[3], user) or '{}'
      redis.call('HDEL', KEYS[3], user)
    end
  end
end
if redis.call('HLEN', KEYS[3]) == 0 then redis.call('SREM', KEYS[5], ARGV[2]) end
return gone
"""


def _require_redis() -> Any:
    try:
        import redis.asyncio
        import redis.exceptions
    except ImportError as ex:
        raise ConfigError(
            "RedisBackend needs the redis package, which is not installed: "
            "pip install 'pachinko[redis]'"
        ) from ex
    return redis.asyncio


class RedisBackend(ConnectionBackend):
    """Share rooms, users and broadcasts between processes through Redis.

    Room history is kept in Redis Streams (see the module's docstring).

    Args:
        url: Redis URL (``redis://``, ``rediss://`` or ``unix://``).
        prefix: Prefix of every key and channel (several apps can share a
            Redis with different prefixes).
        presence_ttl: Seconds after which the members of a process that
            stopped heart-beating (it died) disappear.
        heartbeat: Seconds between presence refreshes (default a third of
            ``presence_ttl``).
        reconnect_min: First delay before reconnecting after a loss.
        reconnect_max: Longest delay between reconnection attempts: a
            restarted Redis is found again at most this long after it is
            back (an attempt is one TCP connect: cheap for Redis).
        socket_timeout: Seconds a Redis command may take.

    Raises:
        ConfigError: The ``redis`` package is missing, or a bad option.
    """

    history_echo = True
    records_anonymous = False

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "pachinko",
        presence_ttl: float = 15.0,
        heartbeat: float | None = None,
        reconnect_min: float = 0.1,
        reconnect_max: float = 0.5,
        socket_timeout: float = 5.0,
    ) -> None:
        self._lib = _require_redis()
        if presence_ttl <= 0 or (heartbeat is not None and not 0 < heartbeat < presence_ttl):
            raise ConfigError(
                f"RedisBackend: expected presence_ttl > 0 and 0 < heartbeat < presence_ttl, "
                f"got presence_ttl={presence_ttl!r}, heartbeat={heartbeat!r}"
            )
        self.url = url
        self.prefix = prefix
        self.presence_ttl = presence_ttl
        self.heartbeat = heartbeat if heartbeat is not None else presence_ttl / 3
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.socket_timeout = socket_timeout
        self.available = False
        #: Connection losses so far: each outage counts once (the receive loop
        #: logs a handler's BackendUnavailable once per outage with it).
        self.outages = 0
        self._host: BackendHost | None = None
        self._node = ""
        self._redis: Any = None
        self._pubsub: Any = None
        self._wanted: set[str] = set()
        self._subscribed: set[str] = set()
        self._sub_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._leave_script: Any = None
        self._claim_script: Any = None
        self._scripts: dict[str, Any] = {}
        # Presence joins that failed while Redis was unreachable: (room, conn),
        # announced if they arrive on reconnection.
        self._presence_pending: set[tuple[str, str]] = set()
        self._kept_script: Any = None
        self._read_script: Any = None
        # Channels subscribed to, not yet confirmed by Redis → set when confirmed.
        self._confirm: dict[str, asyncio.Future[None]] = {}
        # Removals that failed while Redis was unreachable, retried by _restore().
        self._stale: list[tuple[str, tuple[Any, ...]]] = []

    @classmethod
    def from_url(cls, url: str) -> RedisBackend:
        """Build from a URL; ``prefix``, ``presence_ttl`` and ``heartbeat`` may be
        given as query parameters (``redis://h:6379/0?presence_ttl=5``)."""
        parts = urlsplit(url)
        options: dict[str, Any] = {}
        rest = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            kind = _OPTIONS.get(key)
            if kind is None:
                rest.append((key, value))
                continue
            try:
                options[key] = kind(value)
            except ValueError:
                raise ConfigError(
                    f"backend URL {url!r}: {key} must be a {kind.__name__}, got {value!r}"
                ) from None
        clean = urlunsplit(parts._replace(query=urlencode(rest)))
        return cls(clean, **options)

    def __repr__(self) -> str:
        return f"<RedisBackend {self.url} prefix={self.prefix!r}>"

    # -- names --------------------------------------------------------------------

    def _channel(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}:ch:{kind}:{name}"

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    @property
    def _rooms_key(self) -> str:
        return f"{self.prefix}:rooms"

    @property
    def host(self) -> BackendHost:
        if self._host is None:
            raise PachinkoError("RedisBackend is not started: the manager starts it")
        return self._host

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, host: BackendHost) -> None:
        """Connect, register this process, subscribe; fail loudly if unreachable."""
        lib = self._lib
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self._host = host
        self._node = host.node_id
        # NOTE: no retries inside redis-py: a command fails at once when Redis
        #   is down (broadcasts raise), reconnection is ours (with backoff).
        self._redis = lib.Redis.from_url(
            self.url,
            decode_responses=True,
            retry=Retry(NoBackoff(), 0),
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
        )
        self._leave_script = self._redis.register_script(_LEAVE)
        self._claim_script = self._redis.register_script(_CLAIM)
        self._scripts = {
            name: self._redis.register_script(source)
            for name, source in (
                ("join", _P_JOIN),
                ("leave", _P_LEAVE),
                ("confirm", _P_CONFIRM),
                ("reap", _P_REAP),
            )
        }
        self._kept_script = self._redis.register_script(_PUBLISH_KEPT)
        self._read_script = self._redis.register_script(_READ_KEPT)
        self._wanted = {self._channel("node", self._node), self._channel("all")}
        try:
            await self._restore()
            self._pubsub = await self._subscribe_all()
        except Exception as ex:
            await self._redis.aclose()
            raise BackendUnavailable(f"Redis at {self.url} is unreachable: {ex}") from ex
        self.available = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._beat())]
        logger.info("RedisBackend %s: node %s registered", self.url, self._node)

    async def close(self) -> None:
        """Stop listening, withdraw this process's presence, disconnect."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.socket_timeout)
        if self._redis is None:
            return
        with contextlib.suppress(Exception):
            await self._redis.delete(self._key("alive", self._node))
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None
        with contextlib.suppress(Exception):
            await self._redis.aclose()
        self._redis = None
        self._subscribed.clear()
        self.available = False

    async def _subscribe_all(self) -> Any:
        pubsub = self._redis.pubsub()
        async with self._sub_lock:
            channels = sorted(self._wanted)
            for channel in channels:
                self._expect(channel)
            await pubsub.subscribe(*channels)
            self._subscribed = set(channels)
        return pubsub

    def _expect(self, channel: str) -> None:
        """Note that ``channel``'s subscription awaits Redis's confirmation."""
        if channel not in self._confirm:
            self._confirm[channel] = asyncio.get_running_loop().create_future()

    def _confirmed(self, channel: str) -> None:
        waiter = self._confirm.pop(channel, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail_confirmations(self, ex: BaseException) -> None:
        confirm, self._confirm = self._confirm, {}
        for waiter in confirm.values():
            if not waiter.done():
                waiter.set_exception(
                    BackendUnavailable(f"Redis at {self.url} is unreachable: {ex}")
                )
                waiter.exception()  # retrieved: no "never retrieved" warning

    async def _restore(self) -> None:
        """Write this process's presence and local memberships (start, after a restart).

        Removals that failed during an outage are retried first, so that the
        current memberships written next always win.
        """
        stale, self._stale = self._stale, []
        for index, (kind, args) in enumerate(stale):
            try:
                if kind == "leave":
                    await self._leave(*args)
                elif kind == "presence_leave":
                    if await self._presence_leave_now(*args):
                        await self._announce_left(args[0], args[1])
                elif kind == "presence_confirm":
                    await self._announce_left(*args)
                else:
                    await self._redis.hdel(*args)
            except BaseException:
                self._stale = stale[index:] + self._stale
                raise
        host = self.host
        node = self._node
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self._key("alive", node), "1", px=self._ttl_ms())
        for room, ids in host.local_rooms().items():
            if ids:
                pipe.hset(self._key("members", room), mapping=dict.fromkeys(ids, node))
                pipe.zadd(self._rooms_key, {room: 0})
                self._wanted.add(self._channel("room", room))
        for user, ids in host.local_users().items():
            if ids:
                pipe.hset(self._key("users", user), mapping=dict.fromkeys(ids, node))
                self._wanted.add(self._channel("user", user))
        await pipe.execute()
        await self._restore_presence()

    async def _restore_presence(self) -> None:
        """Rewrite this process's presence entries; announce the joins an outage held back."""
        pending, self._presence_pending = self._presence_pending, set()
        try:
            for room, user, conn_id, info in self.host.local_presence():
                if await self._presence_join(room, user, conn_id, info) and (
                    (room, conn_id) in pending
                ):
                    self.host.presence_changed(room, "join", user, info)
        except BaseException:
            self._presence_pending |= pending
            raise

    def _ttl_ms(self) -> int:
        return max(1, int(self.presence_ttl * 1000))

    async def _listen(self) -> None:
        delay = self.reconnect_min
        while True:
            try:
                if self._pubsub is None:
                    # NOTE: connections pooled before the loss may be dead
                    #   without knowing it (Redis restarted): a command on one
                    #   fails with "Connection closed by server", and this
                    #   attempt with it. Drop them; the attempt uses new ones.
                    await self._redis.connection_pool.disconnect(inuse_connections=False)
                    pubsub = await self._subscribe_all()
                    try:
                        await self._restore()
                    except BaseException:
                        with contextlib.suppress(Exception):
                            await pubsub.aclose()
                        raise
                    self._pubsub = pubsub
                    self.available = True
                    delay = self.reconnect_min
                    if self.observer is not None:
                        self.observer.backend_up()
                    logger.warning(
                        "RedisBackend %s: reconnected; resubscribed to %d channels and "
                        "restored this process's presence",
                        self.url,
                        len(self._subscribed),
                    )
                message = await self._pubsub.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as ex:  # NOTE: not only RedisError: a dead transport
                # may raise anything (TypeError from asyncio's writelines on 3.13).
                if self.available:
                    self.outages += 1
                    if self.observer is not None:
                        self.observer.backend_down()
                    logger.error(
                        "RedisBackend %s: connection lost (%s). Broadcasts raise "
                        "BackendUnavailable and messages from other processes are lost "
                        "until it is back; reconnecting with backoff",
                        self.url,
                        ex or type(ex).__name__,
                    )
                else:
                    logger.debug(
                        "RedisBackend %s: reconnection failed (%r); next attempt in %g s",
                        self.url,
                        ex,
                        delay,
                    )
                self.available = False
                self._fail_confirmations(ex)
                pubsub, self._pubsub = self._pubsub, None
                self._subscribed.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max)
                continue
            if message is None:
                continue
            kind = message.get("type")
            if kind == "message":
                try:
                    self._on_message(message["channel"], message["data"])
                except Exception:
                    logger.exception("RedisBackend %s: bad message ignored", self.url)
            elif kind == "subscribe":
                self._confirmed(message["channel"])

    async def _beat(self) -> None:
        key = self._key("alive", self._node)
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                previous = await self._redis.set(key, "1", px=self._ttl_ms(), get=True)
                if previous is None and self._pubsub is not None:
                    logger.warning(
                        "RedisBackend %s: this process's presence was gone (Redis restarted "
                        "or the heartbeat was late); restoring memberships",
                        self.url,
                    )
                    await self._restore()
                await self._reap()
            except Exception as ex:
                logger.debug("RedisBackend heartbeat failed: %r", ex)

    async def _reap(self) -> None:
        """End the presence of dead processes' members, announcing each leave once.

        Every process runs it each heartbeat; the script is atomic, so of
        several processes exactly one removes (and announces) each member.
        """
        rooms = await self._redis.smembers(self._key("prooms", ""))
        for room in sorted(rooms):
            gone = await self._scripts["reap"](
                keys=self._presence_keys(room), args=[self._key("alive", ""), room]
            )
            for i in range(0, len(gone), 2):
                self.host.presence_changed(room, "leave", gone[i], gone[i + 1])

    def _on_message(self, channel: str, data: str) -> None:
        origin, extra, kind_of_frame, body = data.split("\n", 3)
        origin, _, carrier = origin.partition(" ")
        if origin == self._node and kind_of_frame[:1] != "p":
            return  # delivered locally already (history frames excepted)
        kind, _, name = channel[len(self.prefix) + 4 :].partition(":")
        if carrier and self.observer is not None:
            with self.observer.delivering(carrier, f"{kind}:{name}"):
                self._deliver(kind, name, extra, kind_of_frame, body)
        else:
            self._deliver(kind, name, extra, kind_of_frame, body)

    def _deliver(self, kind: str, name: str, extra: str, kind_of_frame: str, body: str) -> None:
        host = self.host
        if kind_of_frame[:1] == "p":  # a history room's frame: this process's too
            epoch, _, offset = kind_of_frame[1:].rpartition(":")
            host.deliver_room(
                name,
                body,
                frozenset(extra.split(",")) if extra else (),
                Position(epoch, int(offset)),
            )
            return
        text: str | bytes = body if kind_of_frame == "t" else base64.b64decode(body)
        if kind == "room":
            host.deliver_room(name, text, frozenset(extra.split(",")) if extra else ())
        elif kind == "user":
            host.deliver_user(name, text)
        elif kind == "node":
            host.deliver_connection(extra, text)
        elif kind == "all":
            host.deliver_all(text, frozenset(extra.split(",")) if extra else ())

    async def _want(self, kind: str, name: str, wanted: bool) -> None:
        """Want (or stop wanting) the channel of a room or user, then sync it."""
        channel = self._channel(kind, name)
        if wanted:
            self._wanted.add(channel)
        else:
            self._wanted.discard(channel)
        await self._sync(channel)

    async def _sync(self, channel: str) -> None:
        """Subscribe to or unsubscribe from ``channel`` as ``_wanted`` says."""
        async with self._sub_lock:
            pubsub = self._pubsub
            if pubsub is None:
                return  # the listener resubscribes everything on reconnect
            want = channel in self._wanted
            if want == (channel in self._subscribed):
                return
            try:
                if want:
                    self._expect(channel)
                    await pubsub.subscribe(channel)
                    self._subscribed.add(channel)
                else:
                    await pubsub.unsubscribe(channel)
                    self._subscribed.discard(channel)
            except Exception as ex:
                logger.warning("RedisBackend: (un)subscribe %s failed: %r", channel, ex)

    async def _write(self, what: str, *commands: tuple[str, tuple[Any, ...]]) -> bool:
        # NOTE: membership writes never raise: while Redis is down they are
        #   logged and rewritten from the local index on reconnection.
        try:
            pipe = self._redis.pipeline(transaction=False)
            for name, args in commands:
                getattr(pipe, name)(*args)
            await pipe.execute()
        except Exception as ex:
            logger.warning(
                "RedisBackend: %s not recorded (%r); it is restored on reconnection", what, ex
            )
            return False
        return True

    async def _leave(self, key: str, ids: list[str], room: str) -> None:
        await self._leave_script(keys=[key, self._rooms_key], args=[*ids, room])

    # -- membership -------------------------------------------------------------------

    async def add_connection(self, conn_id: str, user_id: str | None, first: bool) -> None:
        if user_id is None:
            return
        if first:
            await self._want("user", user_id, True)
        await self._write(
            f"connection of user {user_id!r}",
            ("hset", (self._key("users", user_id), conn_id, self._node)),
        )

    async def add_user_connection(
        self, conn_id: str, user_id: str, first: bool, limit: int
    ) -> bool:
        """Count and record in one script: concurrent handshakes cannot both pass.

        Raises:
            BackendUnavailable: Redis is unreachable (the manager then
                checks the limit on this process only).
        """
        if first:
            # Subscribe before the connection is visible (as add_connection).
            await self._want("user", user_id, True)
        try:
            added = await self._claim_script(
                keys=[self._key("users", user_id)],
                args=[conn_id, self._node, limit, self._key("alive", "")],
            )
        except Exception as ex:
            raise BackendUnavailable(
                f"Redis at {self.url} is unreachable: connection of user {user_id!r} "
                f"not recorded ({ex})"
            ) from ex
        return bool(added)

    async def remove_connection(self, conn_id: str, user_id: str | None, last: bool) -> None:
        if user_id is None:
            return
        key = self._key("users", user_id)
        if not await self._write(
            f"removal of a connection of user {user_id!r}", ("hdel", (key, conn_id))
        ):
            self._stale.append(("hdel", (key, conn_id)))
        if last:
            await self._want("user", user_id, False)

    async def join(self, room: str, conn_id: str, first: bool) -> None:
        if first:
            # Subscribe before the membership is visible: a broadcast sent by
            # another process after it saw the member reaches it.
            await self._want("room", room, True)
        await self._write(
            f"membership of room {room!r}",
            ("hset", (self._key("members", room), conn_id, self._node)),
            ("zadd", (self._rooms_key, {room: 0})),
        )

    async def leave(self, room: str, conn_id: str, last: bool) -> None:
        try:
            await self._leave(self._key("members", room), [conn_id], room)
        except Exception as ex:
            logger.warning(
                "RedisBackend: leaving room %r not recorded (%r); retried on reconnection", room, ex
            )
            self._stale.append(("leave", (self._key("members", room), [conn_id], room)))
        if last:
            await self._want("room", room, False)

    async def _alive(self, nodes: set[str]) -> set[str]:
        """The nodes among ``nodes`` whose presence key has not expired."""
        if not nodes:
            return set()
        ordered = sorted(nodes)
        flags = await self._redis.mget([self._key("alive", n) for n in ordered])
        return {n for n, flag in zip(ordered, flags, strict=True) if flag is not None}

    async def _live(self, entries: dict[str, str]) -> tuple[set[str], list[str]]:
        """Split ``id → node`` entries into live ids and ids of dead nodes."""
        alive = await self._alive(set(entries.values()))
        live = {cid for cid, node in entries.items() if node in alive}
        return live, [cid for cid, node in entries.items() if node not in alive]

    async def _query(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except Exception as ex:
            raise BackendUnavailable(f"Redis at {self.url} is unreachable: {what} ({ex})") from ex

    async def members(self, room: str) -> set[str]:
        return set(await self._query(f"members of room {room!r}", self._members(room)))

    async def _members(self, room: str) -> set[str]:
        key = self._key("members", room)
        live, dead = await self._live(await self._redis.hgetall(key))
        if dead:
            await self._leave(key, dead, room)
        return live

    async def rooms(self, prefix: str) -> list[str]:
        result: list[str] = await self._query("the list of rooms", self._rooms(prefix))
        return result

    async def _rooms(self, prefix: str) -> list[str]:
        if prefix:
            low = b"[" + prefix.encode()
            names = await self._redis.zrangebylex(self._rooms_key, low, low + b"\xff")
        else:
            names = await self._redis.zrange(self._rooms_key, 0, -1)
        if not names:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for room in names:
            pipe.hgetall(self._key("members", room))
        tables: list[dict[str, str]] = await pipe.execute()
        alive = await self._alive({node for table in tables for node in table.values()})
        found = []
        for room, table in zip(names, tables, strict=True):
            dead = [cid for cid, node in table.items() if node not in alive]
            if dead:
                await self._leave(self._key("members", room), dead, room)
            if len(dead) < len(table):
                found.append(room)
        return sorted(found)

    async def user_connections(self, user_id: str) -> set[str]:
        return set(
            await self._query(f"connections of user {user_id!r}", self._user_connections(user_id))
        )

    async def _user_connections(self, user_id: str) -> set[str]:
        key = self._key("users", user_id)
        live, dead = await self._live(await self._redis.hgetall(key))
        if dead:
            await self._redis.hdel(key, *dead)
        return live

    # -- publishing --------------------------------------------------------------------

    async def _publish(self, channel: str, extra: str, text: str | bytes, what: str) -> int:
        redis = self._redis
        if redis is None:
            raise BackendUnavailable(f"RedisBackend is not started: {what} not sent")
        origin = self._node
        if self.observer is not None and (carrier := self.observer.carrier()) is not None:
            origin = f"{origin} {carrier}"
        try:
            if isinstance(text, str):
                data = f"{origin}\n{extra}\nt\n{text}"
            else:
                data = f"{origin}\n{extra}\nb\n{base64.b64encode(text).decode()}"
            receivers: int = await redis.publish(channel, data)
        except Exception as ex:
            raise BackendUnavailable(
                f"Redis at {self.url} is unreachable: {what} not sent ({ex})"
            ) from ex
        # PUBLISH counts this process too when it listens on the channel.
        return receivers - (channel in self._subscribed)

    async def publish_room(self, room: str, text: str | bytes, exclude: Collection[str]) -> int:
        return await self._publish(
            self._channel("room", room), ",".join(exclude), text, f"broadcast to room {room!r}"
        )

    async def publish_user(self, user_id: str, text: str | bytes) -> int:
        return await self._publish(
            self._channel("user", user_id), "", text, f"message to user {user_id!r}"
        )

    async def publish_connection(self, conn_id: str, text: str | bytes) -> int:
        node, dot, _ = conn_id.partition(".")
        if not dot or node == self._node:
            return 0
        return await self._publish(
            self._channel("node", node), conn_id, text, f"message to connection {conn_id!r}"
        )

    async def publish_all(self, text: str | bytes, exclude: Collection[str]) -> int:
        return await self._publish(
            self._channel("all"), ",".join(exclude), text, "broadcast to all"
        )

    # -- presence ----------------------------------------------------------------------

    def _presence_keys(self, room: str) -> list[str]:
        return [
            self._key("presence", room),
            self._key("pcount", room),
            self._key("pinfo", room),
            self._key("pleaving", room),
            self._key("prooms", ""),
        ]

    async def _announce_left(self, room: str, user_id: str) -> None:
        info = await self._presence_confirm_now(room, user_id)
        if info is not None:
            self.host.presence_changed(room, "leave", user_id, info)

    async def _presence_join(self, room: str, user_id: str, conn_id: str, info: str) -> bool:
        arrived = await self._scripts["join"](
            keys=self._presence_keys(room), args=[conn_id, user_id, info, room]
        )
        return bool(arrived)

    async def presence_join(self, room: str, user_id: str, conn_id: str, info: str) -> bool:
        try:
            return await self._presence_join(room, user_id, conn_id, info)
        except Exception as ex:
            # NOTE: loud, and not lost: the entry is rewritten from the local
            #   index on reconnection and the join announced then.
            logger.error(
                "RedisBackend %s: presence of user %r in room %r not recorded (%r); "
                "written and announced on reconnection",
                self.url,
                user_id,
                room,
                ex,
            )
            self._presence_pending.add((room, conn_id))
            return False

    async def _presence_leave_now(self, room: str, user_id: str, conn_id: str) -> bool:
        keys = self._presence_keys(room)
        last = await self._scripts["leave"](
            keys=[keys[0], keys[1], keys[3]], args=[conn_id, self._node]
        )
        return bool(last)

    async def _presence_confirm_now(self, room: str, user_id: str) -> str | None:
        keys = self._presence_keys(room)
        info: str | None = await self._scripts["confirm"](
            keys=[keys[1], keys[2], keys[3], keys[4]], args=[user_id, room]
        )
        return info

    async def presence_leave(self, room: str, user_id: str, conn_id: str) -> bool:
        self._presence_pending.discard((room, conn_id))
        try:
            return await self._presence_leave_now(room, user_id, conn_id)
        except Exception as ex:
            logger.error(
                "RedisBackend %s: presence of user %r in room %r not removed (%r); "
                "removed on reconnection",
                self.url,
                user_id,
                room,
                ex,
            )
            self._stale.append(("presence_leave", (room, user_id, conn_id)))
            return False

    async def presence_confirm_leave(self, room: str, user_id: str) -> str | None:
        try:
            return await self._presence_confirm_now(room, user_id)
        except Exception as ex:
            # NOTE: the leaving mark stays (the user is still listed) and the
            #   confirmation is retried on reconnection, the leave announced then.
            logger.error(
                "RedisBackend %s: leave of user %r from room %r not confirmed (%r); "
                "confirmed and announced on reconnection",
                self.url,
                user_id,
                room,
                ex,
            )
            self._stale.append(("presence_confirm", (room, user_id)))
            return None

    async def presence_members(self, room: str) -> dict[str, str]:
        found: dict[str, str] = await self._query(
            f"presence in room {room!r}", self._redis.hgetall(self._key("pinfo", room))
        )
        return found

    # -- room history --------------------------------------------------------------------

    async def publish_history(
        self,
        room: str,
        head: str,
        tail: str,
        exclude: Collection[str],
        policy: RoomPolicy,
        epoch: str,
    ) -> tuple[Position, str, int]:
        script = self._kept_script
        if script is None:
            raise BackendUnavailable(f"RedisBackend is not started: broadcast to {room!r} not sent")
        ttl = policy.history_ttl
        ttl_ms = 0 if ttl is None else max(1, int(ttl * 1000))
        try:
            found, offset, receivers = await script(
                keys=[self._key("hist", room), self._key("stream", room)],
                args=[
                    epoch,
                    policy.history,
                    ttl_ms,
                    ttl_ms + _EPOCH_GRACE_MS,
                    self._channel("room", room),
                    f"{self._node}\n{','.join(exclude)}",
                    head,
                    tail,
                ],
            )
        except Exception as ex:
            raise BackendUnavailable(
                f"Redis at {self.url} is unreachable: broadcast to room {room!r} not sent ({ex})"
            ) from ex
        # PUBLISH counts this process too when it listens on the channel.
        channel = self._channel("room", room)
        return (
            Position(found, offset),
            f"{head}{found}:{offset}{tail}",
            receivers - (channel in self._subscribed),
        )

    async def subscribed(self, room: str) -> None:
        channel = self._channel("room", room)
        waiter = self._confirm.get(channel)
        if waiter is None:
            if channel in self._subscribed:
                return
            raise BackendUnavailable(
                f"Redis at {self.url} is unreachable: not subscribed to room {room!r}"
            )
        try:
            async with asyncio.timeout(self.socket_timeout):
                await asyncio.shield(waiter)
        except TimeoutError:
            raise BackendUnavailable(
                f"Redis at {self.url}: subscription to room {room!r} not confirmed "
                f"within {self.socket_timeout:g} s"
            ) from None

    async def read_history(
        self, room: str, since: int | None, last: int | None, policy: RoomPolicy, epoch: str
    ) -> HistoryRead:
        script = self._read_script
        if script is None:
            raise BackendUnavailable(f"RedisBackend is not started: history of {room!r} not read")
        ttl = policy.history_ttl
        ttl_ms = 0 if ttl is None else max(1, int(ttl * 1000))
        try:
            found, offset, raw, seconds, micros = await script(
                keys=[self._key("hist", room), self._key("stream", room)],
                args=[
                    epoch,
                    "s" if since is not None else "l",
                    since if since is not None else max(1, last or 0),
                    ttl_ms + _EPOCH_GRACE_MS if ttl_ms else 0,
                ],
            )
        except Exception as ex:
            raise BackendUnavailable(
                f"Redis at {self.url} is unreachable: history of room {room!r} not read ({ex})"
            ) from ex
        if since is None:
            raw = list(reversed(raw))[-last:] if last else []
        cutoff = -1 if not ttl_ms else int(seconds) * 1000 + int(micros) // 1000 - ttl_ms
        entries = []
        for entry_id, pairs in raw:
            fields = dict(zip(pairs[::2], pairs[1::2], strict=True))
            if cutoff < 0 or int(fields.get("t", 0)) >= cutoff:
                entries.append((int(entry_id.partition("-")[2]), fields["f"]))
        last_offset = int(offset)
        complete = True
        if since is not None:
            complete = since >= last_offset or (bool(entries) and entries[0][0] == since + 1)
        return HistoryRead(found, last_offset, entries, complete)
