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

# kombu's Redis transport keeps a queue's messages on one list per priority step: `{queue}` for
# step 0, `{queue}\x06\x16{step}` for the others, each message on the list of the highest step
# at or below its priority, and workers pop the lists in step order. Workers use kombu's own
# steps and separator, so a plain Celery client's message, whatever its priority (0..9), lands on
# a list they read. Our three priorities ride on three of those lists (`KOMBU_PRIORITY`); kombu's
# default priority, 0, keeps meaning normal (broker.priority_from_kombu).
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY_SEP = "\x06\x16"
KOMBU_PRIORITY = {"high": 1, "normal": 3, "low": 9}  # on the lists of steps 0, 3 and 9
# Jobs wait per tenant in the store's fair structures (`Keys.fair`); only this many messages of
# each priority are fed ahead onto its Celery list, so a newcomer waits about one micro-batch.
FEED_DEPTH = 1
NO_TENANT = "-"  # the one tenant of every job sent without one (SDK, CLI, open-format senders)
TENANT_HEADER = "kb_tenant"  # an envelope header: this message came through the fair structures
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
    PRIORITY = "pr"  # 'high' or 'low', absent for normal
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

    With a priority (`high`, `normal`, `low`): jobs ever submitted at it (`in:`) and jobs taken
    off its queue the first time (`out:`). With a queue list's name: jobs carried towards that
    list by a submit's messages (`in:`; they wait in the fair structures, then on the list) and
    jobs of the messages a worker took (`out:`).
    """

    ADDED = "in:"
    TAKEN = "out:"

    def of(self, name: str) -> str:
        """The counter of one priority or one queue list: `in:normal`, `out:{list}`."""
        return f"{self.value}{name}"


class FairField(StrEnum):
    """Fields of a fair structure's state hash (`Keys.fair_state`) besides one per idle tenant
    (the virtual time it left off at, so coming back gains it nothing)."""

    CLOCK = "@v"  # the virtual time of the last message served
    WAITING = "@n"  # messages waiting in the structure


class UsageField(StrEnum):
    """Fields of a tenant's usage hash besides one job counter per state (and the `Spent` ones)."""

    IMAGES_SUBMITTED = "images_submitted"
    IMAGES_SUCCEEDED = "images_succeeded"


class Spent(StrEnum):
    """Field prefixes, in a batch's hash and in a tenant's usage hash, of what generating their
    stored jobs took, per mode: `gpu_us:text2img` (GPU micro-seconds), `cost_n:text2img` (cost in
    billionths). Integers, so that any number of additions stays exact (kandinsky_batch/gpu_time.py)."""

    GPU_US = "gpu_us:"
    COST_N = "cost_n:"

    def of(self, mode: str) -> str:
        """The counter of one mode: `gpu_us:text2img`."""
        return f"{self.value}{mode}"


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


def kombu_list(queue: str, priority: int) -> str:
    """The list kombu's Redis transport files a message of `queue` with kombu `priority` under."""
    step = max(s for s in PRIORITY_STEPS if s <= min(max(priority, 0), 9))
    return f"{queue}{PRIORITY_SEP}{step}" if step else queue


def queue_lists(queue: str) -> list[str]:
    """The Redis lists behind one Celery queue, in the order workers pop them (what backpressure,
    the queue metrics and KEDA's fallback count, with the fair structures)."""
    return [kombu_list(queue, step) for step in PRIORITY_STEPS]


def legacy_lists(queue: str) -> list[str]:
    """The low-priority list of versions before the fair share (kombu options `sep` ':' and
    `priority_steps` [0, 9]): a sender still filing messages there is moved into the fair share."""
    return [f"{queue}:9"]


def queue_list_of(queue: str, priority: str) -> str:
    """The Redis list our messages of `queue` at `priority` are fed onto ('' for no queue)."""
    return kombu_list(queue, KOMBU_PRIORITY[priority]) if queue else ""


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
        """Hash: one tenant's jobs by state, images submitted/succeeded and `Spent`, kept by the status scripts."""
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
        """Sorted set: queue message (JSON of its list, fair structure, tenant, images and
        envelope) -> when it is due (unix time)."""
        return f"{self.prefix}:delayed"

    def fair(self, queue: str, priority: str) -> str:
        """Sorted set: tenant -> virtual time of its next message, for each tenant with messages of
        `queue` at `priority` waiting; the fair structure's other keys are named after this one.

        A tenant's virtual time grows by the images it is served divided by its weight, and the
        tenant furthest behind is served next (store/fair.py).
        """
        return f"{self.prefix}:fair:{queue}:{priority}"

    def fair_state(self, queue: str, priority: str) -> str:
        """Hash of one fair structure: its virtual clock, its waiting messages (`FairField`), and
        where each idle tenant left off."""
        return f"{self.fair(queue, priority)}{FAIR_STATE}"

    def fair_tenant(self, queue: str, priority: str, tenant: str) -> str:
        """List: one tenant's waiting messages, `{images}\n{envelope}` each, pushed on the left."""
        return f"{self.fair(queue, priority)}{FAIR_TENANT}{tenant}"

    def weights(self) -> str:
        """Hash: tenant -> its weight in the fair share (1 when absent)."""
        return f"{self.prefix}:weights"


FAIR_STATE = ":s"  # suffixes of a fair structure's other keys (the Lua derives them the same way)
FAIR_TENANT = ":q:"


def lua_prelude() -> str:
    """The field names as Lua tables for every script: `F` (job), `B` (batch), `E` (event), `U`
    (usage), `Q` (queue-count prefixes: `Q.added .. 'low'` is `in:low`), `S` (spent prefixes) and
    `W` (a fair structure's state fields), and the fair structures' key suffixes and depth."""
    tables: dict[str, type[StrEnum]] = {
        "F": JobField,
        "B": BatchField,
        "E": EventField,
        "U": UsageField,
        "Q": QueueCount,
        "S": Spent,
        "W": FairField,
    }
    text = ""
    for name, fields in tables.items():
        pairs = ", ".join(f"{f.name.lower()} = '{f.value}'" for f in fields)
        text += f"local {name} = {{{pairs}}}\n"
    text += f"local FAIR_STATE, FAIR_TENANT = '{FAIR_STATE}', '{FAIR_TENANT}'\n"
    text += f"local NO_TENANT, FEED_DEPTH = '{NO_TENANT}', {FEED_DEPTH}\n"
    return text + f"local EVENTS_MAX = {EVENTS_MAX}\n"
