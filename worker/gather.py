"""Fill a micro-batch across messages: take more compatible jobs off the queue, never wait.

A service submits jobs one at a time, so each comes in a message of its own, and a message of one
job alone would be a micro-batch of one. After Celery hands the worker a message, the worker takes
more messages of the same queue while they fit the last micro-batch (`MAX_BATCH_SIZE` images):
high priority before normal before low, and within a priority by fair share between tenants
(straight from the fair structures, kandinsky_batch/store/fair.py), compatible jobs only (same
mode, size, steps, guidance, strength, negative prompt or not), of any tenant. It takes what is
there and never waits for more, so a lone job starts as soon as before. Each message is taken
under a lease in one script (kandinsky_batch/store/taken.py): a worker killed at any instant
loses none. A message that does not fit goes back to the front of its Celery list, and anything
that is not a valid message of ours goes back too, for the usual path to refuse with its warning
or error code.
"""

from __future__ import annotations

import logging
from typing import Any

from kandinsky_batch.broker import priority_from_kombu
from kandinsky_batch.envelope import call_and_priority
from kandinsky_batch.errors import BadMessage, InvalidSpec
from kandinsky_batch.keys import TASK_NAME, queue_list_of
from kandinsky_batch.manifest import BatchDone
from kandinsky_batch.settings import Settings
from kandinsky_batch.store.status import StatusStore
from kandinsky_batch.store.taken import TakenStore
from kandinsky_batch.wire import parse_message, validate_spec
from worker.delivery import Delivery
from worker.generate import compat_key
from worker.jobs import Job
from worker.messages import read_message
from worker.shutdown import Shutdown

log = logging.getLogger(__name__)


def room_left(jobs: list[Job], max_images: int) -> int:
    """Images that would fill the last micro-batch of `jobs[0]`'s kind (0 when it is full)."""
    key = compat_key(jobs[0].spec)
    images = sum(job.spec.num_images for job in jobs if compat_key(job.spec) == key)
    return -images % max_images


def images_if_fits(message: dict[str, Any], key: tuple[Any, ...], room: int, settings: Settings) -> int:
    """The images of a message whose every job is valid, served and of kind `key`, if they fit; else 0."""
    try:
        parsed = parse_message(message)
    except BadMessage:
        return 0
    if parsed.problem:
        return 0
    images = 0
    for entry in parsed.entries:
        if entry.data is None:
            return 0
        try:
            spec = validate_spec({**entry.data, "seed": entry.seed}, settings)
        except InvalidSpec:
            return 0
        if spec.mode not in settings.modes or compat_key(spec) != key:
            return 0
        images += spec.num_images
    return images if images <= room else 0


class Gatherer:
    """Takes more messages of a task's queue for the worker `name` (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        name: str,
        status: StatusStore,
        taken: TakenStore,
        delivery: Delivery,
        shutdown: Shutdown,
        on_batch_done: BatchDone,
    ) -> None:
        self.settings = settings
        self.name = name
        self.status = status
        self.taken = taken
        self.delivery = delivery
        self.shutdown = shutdown
        self.on_batch_done = on_batch_done

    def take_more(self, jobs: list[Job], queue: str) -> list[Job]:
        """Jobs of more messages of `queue`, received and leased, that fill the last micro-batch."""
        if not jobs or not queue or self.shutdown.stopping or self.status.crashed([j.ref for j in jobs]):
            return []  # a job that crashed a worker before runs without company (worker/engine.py)
        room = room_left(jobs, self.settings.max_batch_size)
        if room == 0:
            return []
        key = compat_key(jobs[0].spec)
        taken = self.taken.take(
            self.name, queue, most=room, room=room
        )  # one message per job is the usual case
        received: list[Job] = []
        for n, item in enumerate(taken):
            call = call_and_priority(item.message, TASK_NAME)
            images = images_if_fits(call[0], key, room, self.settings) if call is not None else 0
            if not images or call is None:
                for later in reversed(taken[n:]):  # back in front, in their order
                    self.taken.put_back(self.name, later.entry)
                break
            message, priority = call[0], priority_from_kombu(call[1])
            fed_list = queue_list_of(queue, priority)  # where its jobs were counted onto
            received += read_message(
                message, self.settings, self.status, self.on_batch_done, priority, fed_list
            )
            room -= images
        more = self.delivery.claim(received)
        if received:
            log.info("took %d more jobs to fill the micro-batch", len(more))
        return more
