"""Sharded batch evaluation as a Kubernetes Indexed Job: Kubernetes schedules, retries and
counts the shards (`job.py` builds the objects, `api.py` talks to the API server)."""
