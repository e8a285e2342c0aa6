"""The bus: everything a service does on NATS JetStream, one concern per module.

- ``names``: streams, subjects, durables, KV buckets and message ids (the wire contract);
- ``connection``: a connection that reconnects forever (``connect``, ``Bus``);
- ``topology``: creating streams, buckets and consumers (``ghibli-anim bus init``);
- ``publish``: publishing work and events (dedup ids, trace context);
- ``consumer``: ``WorkConsumer``, one message at a time with heartbeats, retries and
  give-up; the planner's conductor and advisories consumers;
- ``watch``: one job's events in stream order (WatchAnimation);
- ``buckets``: the job bucket on its stream (atomic batches, key listing, ordered walks).
"""
