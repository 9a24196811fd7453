"""Wan2GP as an engine of comfy-worker.

* :mod:`worker_wgp.protocol` — the JSON-lines messages between the engine and its child (stdlib only);
* :mod:`worker_wgp.child` — the child program, run by Wan2GP's Python with Wan2GP imported in-process
  (stdlib + Wan2GP only: it never imports comfy_worker);
* :mod:`worker_wgp.engine` — the parent side: starts and supervises the child, sends requests, maps errors;
  its parts :mod:`worker_wgp.supervision` (the child's lifecycle) and :mod:`worker_wgp.rpc` (the requests);
* :mod:`worker_wgp.tasks` — task types → Wan2GP models and each type's validated params contract;
* :mod:`worker_wgp.handler` — the stages (prepare / execute / finish) of a Wan2GP task.

This ``__init__`` imports nothing, so the child can import ``worker_wgp.protocol`` inside Wan2GP's environment.
"""
