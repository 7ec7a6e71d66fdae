"""The operator: the only writer of Kubernetes objects, cut into small services.

``app``        kopf: watch handlers, start-up and shut-down (the only kopf import).
``runtime``    the shared state, built at start-up and passed to every service.
``watch``      what a Task's watch event means: admit, cancel, retry.
``admission``  ``admissible(raw)``, the one decision, and the batching admitter.
``mirror``     the outbox → Task statuses and Events.
``pools``      the pool registry and the scaler.
``upkeep``     rescuer, TTL deletions, orphan sweep, history retention.
``scrape``     the database figures of the metrics, when scraped.
``services``   which services every replica runs and which only the leader.
``loop``       the one supervising loop a service's ``run_once`` runs in.

Because PostgreSQL rows carry the facts and NOTIFY only wakes readers, a
restart loses nothing: every service resumes from the rows.
"""
