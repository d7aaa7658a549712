"""The Celery app for Flower, configured as the workers' (same broker options and queues).

`celery -A producer.flower flower` with the workers' `KANDINSKY_BATCH_*` settings; a bare
`celery --broker=... flower` misses the workers' transport options and gets no replies from them.
"""

from __future__ import annotations

from kandinsky_batch.broker import make_celery
from kandinsky_batch.settings import Settings

app = make_celery(Settings())
