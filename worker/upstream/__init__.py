"""Running an upstream-style harness (karpathy/autoresearch's shape) unchanged: the launcher that runs
it in the training process (:mod:`worker.upstream.launch`) and the evaluator that scores what it
handed over (:mod:`worker.upstream.evaluate`). Both are scripts the worker copies next to the run."""
