"""The hand-off between a request and the compute that answers it (see dispatch/base.py).

The layer above embedplatform and below every app: queue and key names (keys.py), the work
item and reply frames (frames.py), the Dispatcher interface (base.py) and the platform's own
models' dispatcher (local.py). It imports nothing from the apps; lower layers reach Celery
tasks by name (keys.PROVIDER_EMBED_TASK, keys.JOB_WEBHOOK_TASK), never by importing them.
"""
