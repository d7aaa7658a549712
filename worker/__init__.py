"""The GPU worker: a Celery consumer that batches jobs, runs the Kandinsky pipelines and stores images."""
