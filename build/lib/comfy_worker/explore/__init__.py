"""The exploration suite: render many variations of one workflow and compare them side by side.

``comfy-worker run | analyze | batch | contact-sheet | video-analyze`` (and the ``cr-*`` console scripts):

* :mod:`.analyze` — every literal input of a workflow, categorised, with suggested ranges; a YAML template.
* :mod:`.space` — parameters and sampling (sobol / lhs via ``scipy.stats.qmc``, grid, random, linear).
* :mod:`.batch_config` — the batch YAML, checked key by key before anything is submitted.
* :mod:`.batch` — the batch directory (journal, ``metadata.csv``, runs) and the loop over one runner;
  :mod:`.runners` — the local runner (one ComfyUI, sequential) and the fleet runner (``comfy`` queue tasks).
* :mod:`.sheet` — the self-contained HTML contact sheet; :mod:`.video` — video-analyze.

A client of the queue and the engine: it imports them; nothing imports it but ``cli``.
"""
