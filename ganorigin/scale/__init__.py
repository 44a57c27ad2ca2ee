"""Scale out on Ray: ``predict`` / ``extract`` / ``evaluate`` as Ray Data pipelines (:mod:`.batch`), and the
REST API on Ray Serve with dynamic batching (:mod:`.serve`). Ray is an optional dependency
(``pip install ganorigin[ray]``), imported only for ``--engine ray`` and Serve."""
