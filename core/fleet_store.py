"""What replicas of one stream share besides the events, kept in NATS JetStream.

- A key-value bucket `<stream>_FLEET` holds the fleet state (`FleetState` as JSON under
  `state`) and the next free model version number (`versions`). Every change is a
  compare-and-set on the key's revision, so two replicas changing it at once cannot lose
  either change: the loser reads again and reapplies its change.
- A key-value bucket `<stream>_LEADER` whose values expire after `lease` seconds holds the
  leader's name under `leader`. The leader renews it (a compare-and-set on its own revision)
  well within the lease; when it dies, the key expires and the first replica to create it
  leads. Expiry runs on the NATS servers' clock alone, so replicas' clocks do not matter.
- An object store `<stream>_CHECKPOINTS` holds checkpoints as tar archives named `v<version>`.
- A stream `<stream>_FEEDBACK` (kept an hour) carries every replica's impressions and clicks,
  which every replica reads from the time it started, so the leader judges the fleet's CTR and
  a newly elected one has the recent window already.

Every call is synchronous (the learner and gRPC handlers are plain threads), retried through
leader elections and reconnects, and bounded by `timeout` (`open_timeout` to open: a replica
starting beside a node that just restarted waits for the cluster); failures are EventLogError,
as for the event log on the same cluster.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import nats
import nats.errors
from nats.js.api import DeliverPolicy, KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.errors import ObjectNotFoundError

from covisit.core.eventlog import EventLogError
from covisit.core.jetstream_log import Transient, retrying
from covisit.core.loop_thread import LoopThread

log = logging.getLogger(__name__)
STATE_KEY, VERSIONS_KEY, LEADER_KEY = "state", "versions", "leader"
REQUEST_SECONDS = 2.0  # one JetStream API request; a lost one is sent again within the deadline
FEEDBACK_SECONDS = 3600  # feedback kept in its stream: more than any CTR window needs


@dataclass(frozen=True)
class FleetState:
    """What every replica serves. `line`: the model line the leader serves (a checkpoint in the
    object store); `pinned`: a rolled-back version everyone serves instead, learning nothing;
    `ab` and `shadow`: (version, fraction) of a running experiment; `by`: who wrote it last."""

    line: int | None = None
    pinned: int | None = None
    reason: str = ""
    ab: tuple[int, float] | None = None
    shadow: tuple[int, float] | None = None
    by: str = ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FleetState:
        raw = json.loads(data)
        for key in ("ab", "shadow"):
            if raw.get(key) is not None:
                raw[key] = (int(raw[key][0]), float(raw[key][1]))
        return cls(**raw)

    def versions(self) -> set[int]:
        """The versions this state needs kept."""
        found = {self.line, self.pinned, self.ab and self.ab[0], self.shadow and self.shadow[0]}
        return {v for v in found if v}


class FleetStore:
    """The fleet's buckets on the cluster at `servers`; `name` is this replica's."""

    def __init__(self, servers: str | Sequence[str], *, stream: str, name: str, replicas: int = 1,
                 lease: float = 3.0, timeout: float = 10.0, open_timeout: float = 60.0):
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.stream, self.name, self.replicas, self.lease, self.timeout = stream, name, replicas, lease, timeout
        self._leader_revision: int | None = None  # of our own lease, while we hold it (set on the loop only)
        self._loop = LoopThread(f"fleet-{stream}")
        try:
            try:
                self._loop.run(self._connect(), open_timeout)
            except (TimeoutError, nats.errors.Error) as exc:
                raise EventLogError(f"cannot connect to NATS at {self.servers}: {exc!r}") from exc
            self._run(self._open, "open the fleet's buckets", open_timeout)
        except BaseException:
            self._loop.close()
            raise

    # -- fleet state -------------------------------------------------------------------------

    def state(self) -> FleetState:
        return self._run(self._read_state, "read the fleet state")[0]

    def change_state(self, change: Callable[[FleetState], FleetState]) -> FleetState:
        """Apply `change` to the current state and store the result, again from the new state
        should another replica change it in between."""
        return self._run(lambda: self._change_state(change), "change the fleet state")

    def watch_state(self, on_change: Callable[[FleetState], None]) -> None:
        """Call `on_change` (on the store's loop thread: hand the work off) with the state now
        and after every change, until `close`."""
        self._run(lambda: self._start_watch(on_change), "watch the fleet state")

    def reserve_versions(self, count: int) -> int:
        """The first of `count` version numbers no replica was given before."""
        return self._run(lambda: self._reserve(count), "reserve version numbers")

    # -- feedback ------------------------------------------------------------------------------

    def publish_feedback(self, payload: bytes) -> None:
        """Send one feedback message without waiting (feedback may be lost; requests must not wait)."""
        if self._loop.loop.is_closed():  # stopping: the request still gets its answer
            return
        asyncio.run_coroutine_threadsafe(self._nc.publish(self._feedback_subject, payload), self._loop.loop)

    def watch_feedback(self, on_message: Callable[[bytes], None]) -> None:
        """Call `on_message` (on the loop thread: keep it short) with every feedback message
        published from now on, until `close`."""
        async def deliver(msg) -> None:
            try:
                on_message(msg.data)
            except Exception:
                log.exception("fleet store: a feedback message could not be applied")

        async def subscribe() -> None:
            await self._js.subscribe(self._feedback_subject, cb=deliver, ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.NEW)
        self._run(subscribe, "follow the feedback stream")

    # -- leadership ----------------------------------------------------------------------------

    def try_lead(self) -> bool:
        """Take the lease if nobody holds it, renew it if we do; whether we lead now."""
        return self._run(self._try_lead, "renew the leader lease")

    def leader(self) -> str:
        """Who holds the lease ("" when nobody does)."""
        return self._run(self._leader, "read the leader lease")

    def resign(self) -> None:
        if self._leader_revision is not None:
            self._run(self._resign, "give up the leader lease")

    # -- checkpoints ---------------------------------------------------------------------------

    def has_checkpoint(self, version: int) -> bool:
        return self._run(lambda: self._has(version), "look up a checkpoint")

    def put_checkpoint(self, version: int, data: bytes) -> None:
        self._run(lambda: self._objects.put(_object_name(version), data), "store a checkpoint")

    def get_checkpoint(self, version: int) -> bytes | None:
        """The archive `put_checkpoint` stored, or None."""
        return self._run(lambda: self._get(version), "fetch a checkpoint")

    def checkpoint_versions(self) -> list[int]:
        return self._run(self._list, "list the checkpoints")

    def delete_checkpoint(self, version: int) -> None:
        self._run(lambda: self._objects.delete(_object_name(version)), "delete a checkpoint")

    def close(self) -> None:
        try:
            self._loop.run(self._nc.close(), self.timeout)
        except Exception as exc:  # closing goes on
            log.warning("fleet store: closing the NATS connection failed: %r", exc)
        self._loop.close()

    # -- on the loop ---------------------------------------------------------------------------

    def _run(self, attempt, what: str, seconds: float | None = None):
        """`await attempt()` on the loop, retried through transient failures for `seconds`."""
        seconds = seconds or self.timeout
        try:
            return self._loop.run(retrying(attempt, time.monotonic() + seconds), seconds + 1)
        except (Transient, TimeoutError) as exc:
            raise EventLogError(f"NATS did not {what} within {seconds:.0f} s: {exc}") from exc
        except nats.errors.Error as exc:
            raise EventLogError(f"NATS could not {what}: {exc!r}") from exc

    async def _connect(self) -> None:
        self._nc = await nats.connect(servers=self.servers, name=f"covisit-fleet-{self.name}",
                                      connect_timeout=self.timeout, max_reconnect_attempts=-1,
                                      reconnect_time_wait=0.25, error_cb=self._on_error)

    async def _open(self) -> None:
        js = self._js = self._nc.jetstream(timeout=REQUEST_SECONDS)
        base = self.stream
        self._feedback_subject = f"covisit.{base}.feedback"
        try:
            await js.stream_info(f"{base}_FEEDBACK")
        except NotFoundError:
            await js.add_stream(StreamConfig(name=f"{base}_FEEDBACK", subjects=[self._feedback_subject],
                                             max_age=FEEDBACK_SECONDS, num_replicas=self.replicas,
                                             storage=StorageType.FILE))
        self._kv = await _bucket(js, KeyValueConfig(bucket=f"{base}_FLEET", history=1, replicas=self.replicas,
                                                    storage=StorageType.FILE))
        self._lease = await _bucket(js, KeyValueConfig(bucket=f"{base}_LEADER", history=1, ttl=self.lease,
                                                       replicas=self.replicas, storage=StorageType.FILE))
        try:
            self._objects = await js.object_store(f"{base}_CHECKPOINTS")
        except (BucketNotFoundError, NotFoundError):
            self._objects = await js.create_object_store(f"{base}_CHECKPOINTS", config=ObjectStoreConfig(
                replicas=self.replicas, storage=StorageType.FILE))

    async def _on_error(self, exc: Exception) -> None:
        log.warning("fleet store: NATS error: %r", exc)

    async def _read_state(self) -> tuple[FleetState, int]:
        try:
            entry = await self._kv.get(STATE_KEY)
        except KeyNotFoundError:
            return FleetState(), 0
        return FleetState.from_json(entry.value), entry.revision

    async def _change_state(self, change) -> FleetState:
        while True:
            state, revision = await self._read_state()
            new = replace(change(state), by=self.name)
            try:
                if revision:
                    await self._kv.update(STATE_KEY, new.to_json(), last=revision)
                else:
                    await self._kv.create(STATE_KEY, new.to_json())
                return new
            except KeyWrongLastSequenceError:
                continue  # changed meanwhile: apply ours to the newer state

    async def _start_watch(self, on_change) -> None:
        watcher = await self._kv.watch(STATE_KEY)

        async def pump() -> None:
            async for entry in watcher:
                if entry is not None and entry.value:  # None marks the end of the initial values
                    try:
                        on_change(FleetState.from_json(entry.value))
                    except Exception:
                        log.exception("fleet store: a state change could not be handed over")
        asyncio.get_running_loop().create_task(pump())
        if (await self._read_state())[1] == 0:  # no state yet: the watcher has nothing to say
            on_change(FleetState())

    async def _reserve(self, count: int) -> int:
        while True:
            try:
                entry = await self._kv.get(VERSIONS_KEY)
            except KeyNotFoundError:
                try:
                    await self._kv.create(VERSIONS_KEY, str(1 + count).encode())
                    return 1
                except KeyWrongLastSequenceError:
                    continue
            first = int(entry.value)
            try:
                await self._kv.update(VERSIONS_KEY, str(first + count).encode(), last=entry.revision)
                return first
            except KeyWrongLastSequenceError:
                continue

    async def _try_lead(self) -> bool:
        revision = self._leader_revision
        try:
            if revision is not None:
                revision = await self._lease.update(LEADER_KEY, self.name.encode(), last=revision)
            else:
                revision = await self._lease.create(LEADER_KEY, self.name.encode())
        except KeyWrongLastSequenceError:  # someone else holds it (or took it after ours expired)
            revision = None
        self._leader_revision = revision
        return revision is not None

    async def _leader(self) -> str:
        try:
            entry = await self._lease.get(LEADER_KEY)
        except KeyNotFoundError:
            return ""
        return (entry.value or b"").decode()

    async def _resign(self) -> None:
        revision, self._leader_revision = self._leader_revision, None
        try:
            await self._lease.delete(LEADER_KEY, last=revision)
        except KeyWrongLastSequenceError:
            pass  # not ours any more

    async def _has(self, version: int) -> bool:
        try:
            info = await self._objects.get_info(_object_name(version))
        except ObjectNotFoundError:
            return False
        return not info.deleted

    async def _get(self, version: int) -> bytes | None:
        try:
            return (await self._objects.get(_object_name(version))).data
        except ObjectNotFoundError:
            return None

    async def _list(self) -> list[int]:
        try:
            infos = await self._objects.list()
        except NotFoundError:  # an empty store
            return []
        return sorted(int(i.name[1:]) for i in infos if not i.deleted and i.name.startswith("v"))


async def _bucket(js, config: KeyValueConfig):
    """The bucket, created if no replica did yet."""
    try:
        return await js.key_value(config.bucket)
    except (BucketNotFoundError, NotFoundError):
        return await js.create_key_value(config=config)


def _object_name(version: int) -> str:
    return f"v{version:012d}"
