"""The Celery app for Flower, configured as the workers' (same broker options and queues).

`celery -A producer.flower flower` with the workers' `KANDINSKY_BATCH_*` settings; a bare
`celery --broker=... flower` misses the workers' transport options and gets no replies from them.

Flower can cancel tasks and shut workers down, so it listens on 127.0.0.1 unless told otherwise
(`--address=0.0.0.0` or `FLOWER_ADDRESS`, e.g. in a container behind a published port), where
Flower's own default is every interface.
"""

from __future__ import annotations

from flower.options import options

from kandinsky_batch.broker import make_celery
from kandinsky_batch.settings import load_settings

LOOPBACK = "127.0.0.1"

# Flower reads its options after the app is imported: the command line, FLOWER_* variables and
# flowerconfig.py still win over this.
options.address = LOOPBACK

app = make_celery(load_settings())  # a bad variable: one line each and exit 2
