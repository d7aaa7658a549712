"""Every Redis key, hash field and Celery name, defined once for producers, workers and the Lua.

Job ids derive from their batch (`{batch_id}-{index}`), so a batch's jobs can be listed from its
total alone and a job's batch is read from its id: `JobRef` is that pair, parsed once.
The Lua scripts get the field names from here too (`lua_prelude`), so a rename is one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

TASK_NAME = "kandinsky_batch.run_jobs"
MESSAGE_VERSION = 1
MAX_INDEX = 10**9 - 1  # a job's index in its batch (a billion lines is past any real batch)
# What submit makes (hex digests, uuids) and what an open-format sender may add: never a path.
BATCH_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

# Priorities ride on kombu's Redis priority lists: a queue's normal messages are the list named
# after it, its low-priority ones the list `{queue}:9`. Workers pop every normal list before
# any low one, so a big low-priority dataset never delays jobs sent at the normal priority.
PRIORITY_SEP = ":"
LOW_PRIORITY_STEP = 9
EVENTS_MAX = 100_000  # entries kept in the event stream (approximate trim)
DEAD_LETTERS_MAX = 100_000


class JobField(StrEnum):
    """Fields of a job's hash (`{prefix}:job:{job_id}`)."""

    STATE = "st"
    SEED = "sd"
    CREATED = "ct"
    ATTEMPTS = "a"  # starts, bumped by each `running`
    CRASHES = "cr"  # times its worker died while it ran
    RETRIES = "rt"  # hand-backs for transient errors (storage down)
    PRIORITY = "pr"  # 'low', or absent for normal
    WORKER = "w"
    STARTED = "t0"
    FINISHED = "t1"
    STEP = "ps"
    TOTAL_STEPS = "pt"
    SPEC = "sp"  # wire form, from its first start on
    OUTPUTS = "o"  # JSON list of URIs
    METADATA = "m"
    ERROR_CODE = "ec"
    ERROR_MESSAGE = "em"


class EventField(StrEnum):
    """Fields of one event-stream entry."""

    JOB = "job"
    STATE = "state"


class BatchField(StrEnum):
    """Fields of a batch's hash (`{prefix}:batch:{batch_id}`) besides one counter per state."""

    TOTAL = "total"
    SPAN = "span"  # one past the highest index recorded: how many record shards there are
    CREATED = "ct"
    FINISHED = "ft"
    MANIFEST = "mf"
    TENANT = "tn"  # who submitted it over HTTP (absent for the SDK, the CLI and open-format senders)
    SEQUENCE = "sq"  # jobs of its priority submitted before its first one (queue position estimates)
    WEBHOOK = "wh"  # JSON of its webhook (url, events, whether batch events are wanted)
    WEBHOOK_DONE = "whd"  # set once its `batch.completed` delivery is queued


class QueueCount(StrEnum):
    """Field prefixes of the queue-count hash (`Keys.queue_counts`): a prefix and a name make a counter.

    With a priority (`normal`, `low`): jobs ever submitted at it (`in:`) and jobs taken off its
    queue the first time (`out:`). With a queue list's name: jobs carried onto that list by a
    submit's message (`in:`) and jobs of the messages a worker popped off it (`out:`).
    """

    ADDED = "in:"
    TAKEN = "out:"

    def of(self, name: str) -> str:
        """The counter of one priority or one queue list: `in:normal`, `out:{list}`."""
        return f"{self.value}{name}"


class UsageField(StrEnum):
    """Fields of a tenant's usage hash besides one job counter per state."""

    IMAGES_SUBMITTED = "images_submitted"
    IMAGES_SUCCEEDED = "images_succeeded"


def is_batch_id(value: object) -> bool:
    """Whether `value` is a batch id: the whole string, so a trailing newline is no loophole."""
    return isinstance(value, str) and BATCH_ID.fullmatch(value) is not None


def is_index(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INDEX


@dataclass(frozen=True, order=True)
class JobRef:
    """One job: its batch and its index in it. `str(ref)` is the job id."""

    batch_id: str
    index: int

    def __str__(self) -> str:
        return f"{self.batch_id}-{self.index}"

    @property
    def id(self) -> str:
        return str(self)

    @classmethod
    def parse(cls, job: str) -> JobRef | None:
        """The ref of a job id, or None if it is not one.

        Only the one spelling `str(ref)` gives: no other digits (`isdigit` takes '²' and '٣'),
        no leading zeros, no batch id that submit would refuse, so one job has one id.
        """
        batch, sep, index = job.rpartition("-")
        if not sep or not is_batch_id(batch) or not (index.isascii() and index.isdigit()):
            return None
        ref = cls(batch, int(index))
        return ref if str(ref) == job and ref.index <= MAX_INDEX else None


def queue_lists(queue: str) -> list[str]:
    """The Redis lists behind one Celery queue, normal priority first (what KEDA and backpressure count)."""
    return [queue, f"{queue}{PRIORITY_SEP}{LOW_PRIORITY_STEP}"]


def queue_list_of(queue: str, low: bool) -> str:
    """The Redis list a message of `queue` waits on at its priority ('' for no queue)."""
    if not queue:
        return ""
    return queue_lists(queue)[1 if low else 0]


def job_id(batch_id: str, index: int) -> str:
    return str(JobRef(batch_id, index))


class Keys:
    """Redis key names under one prefix (so tests and tenants can share a Redis)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def job(self, job: str | JobRef) -> str:
        return f"{self.prefix}:job:{job}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def records_prefix(self, batch_id: str) -> str:
        return f"{self.prefix}:rec:{batch_id}:"

    def records(self, batch_id: str, shard: int) -> str:
        """String of packed records of the batch's not-yet-received jobs (store/records.py)."""
        return f"{self.records_prefix(batch_id)}{shard}"

    def leases(self) -> str:
        """Sorted set: job id -> lease expiry (unix time)."""
        return f"{self.prefix}:leases"

    def owners(self) -> str:
        """Hash: job id -> the worker holding its lease."""
        return f"{self.prefix}:owners"

    def events(self) -> str:
        """Stream of status changes: `job`, `state` per entry."""
        return f"{self.prefix}:events"

    def worker(self, name: str) -> str:
        """A worker's heartbeat: JSON of its modes and loads, expiring unless renewed."""
        return f"{self.prefix}:worker:{name}"

    def workers(self) -> str:
        """Sorted set: worker name -> its last heartbeat (unix time), so workers are listed in O(workers)."""
        return f"{self.prefix}:workers"

    def tenants(self) -> str:
        """Set of the tenants that have submitted, so usage is listed in O(tenants)."""
        return f"{self.prefix}:tenants"

    def dead_letters(self) -> str:
        """List of job ids that failed as attempts_exhausted, newest first."""
        return f"{self.prefix}:dead"

    def api_keys(self) -> str:
        """Hash: sha256 of an API key -> JSON of its id, tenant and limits (never the key itself)."""
        return f"{self.prefix}:apikeys"

    def batch_id_secret(self) -> str:
        """String: the random secret keyed batch ids of tenants are derived with (HMAC), made once."""
        return f"{self.prefix}:bidsecret"

    def rate(self, key_id: str) -> str:
        """Hash: one API key's token bucket (tokens left, when last counted)."""
        return f"{self.prefix}:rate:{key_id}"

    def usage(self, tenant: str) -> str:
        """Hash: one tenant's jobs by state and images submitted/succeeded, kept by the status scripts."""
        return f"{self.usage_prefix()}{tenant}"

    def usage_prefix(self) -> str:
        return f"{self.prefix}:usage:"

    def queue_counts(self) -> str:
        """Hash: jobs ever submitted (`in:<priority>`) and first received (`out:<priority>`) (`QueueCount`).

        Their difference is how many jobs of a priority wait; a job's own submit sequence minus
        `out` estimates its queue position, in O(1).
        """
        return f"{self.prefix}:qcount"

    def webhook_secrets(self) -> str:
        """Hash: tenant -> its webhook signing secret (`whsec_...`)."""
        return f"{self.prefix}:whsecrets"

    def webhook_deliveries(self) -> str:
        """Hash: delivery id -> JSON of one pending webhook delivery (url, payload, attempts)."""
        return f"{self.prefix}:whd"

    def webhook_due(self) -> str:
        """Sorted set: delivery id -> when it is next tried (unix time)."""
        return f"{self.prefix}:whdue"

    def webhook_dead(self, tenant: str) -> str:
        """List: JSON of a tenant's deliveries given up on, newest first."""
        return f"{self.prefix}:whdead:{tenant}"

    def running(self) -> str:
        """Sorted set: job id -> when it last started, for every job in state `running`.

        How the reaper finds a running job that no lease covers (its worker lost it), in
        O(running jobs), and how in-flight jobs are counted without reading every job.
        """
        return f"{self.prefix}:running"

    def taken(self, worker: str) -> str:
        """Hash: entry id -> "{list}\n{message}" for each message a worker took beside Celery's one.

        A worker takes more queue messages than Celery gives it, to fill a micro-batch; each
        stays here until that worker's task ends, or until a reaper returns it to its list.
        """
        return f"{self.prefix}:taken:{worker}"

    def taking(self) -> str:
        """Sorted set: worker -> expiry of its lease on the messages it took (see `taken`)."""
        return f"{self.prefix}:taking"

    def delayed(self) -> str:
        """Sorted set: queue message (JSON of list and envelope) -> when it is due (unix time)."""
        return f"{self.prefix}:delayed"


def lua_prelude() -> str:
    """The field names as Lua tables for every script: `F` (job), `B` (batch), `E` (event), `U`
    (usage) and `Q` (queue-count prefixes: `Q.added .. 'low'` is `in:low`)."""
    tables: dict[str, type[StrEnum]] = {
        "F": JobField,
        "B": BatchField,
        "E": EventField,
        "U": UsageField,
        "Q": QueueCount,
    }
    text = ""
    for name, fields in tables.items():
        pairs = ", ".join(f"{f.name.lower()} = '{f.value}'" for f in fields)
        text += f"local {name} = {{{pairs}}}\n"
    return text + f"local EVENTS_MAX = {EVENTS_MAX}\n"
