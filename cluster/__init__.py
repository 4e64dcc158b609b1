"""The control plane of autoresearch-farm, in layers; a module imports only its own layer and
those below it (tests/policy/test_layout.py checks this):

1. ``errors``, ``config``, ``records``: the vocabulary (the worker's records come from
   :mod:`worker.contract`);
2. ``store`` (Redis) and ``repo`` (git);
3. ``loop``: the controller and its parts;
4. ``actors``: the loop, the workers and the proposer as Ray actors;
5. ``launch``, ``report``, ``remote``: running a run, looking at one, reaching a cluster;
6. ``cli`` and ``head``: the entry points.
"""
