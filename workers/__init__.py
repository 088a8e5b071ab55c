"""Background work (arq): thin jobs named `<area>.<verb>` that call one domain service each.

In embedded mode the worker runs inside the API process (the vector shards open in one process only); with
`REDIS_URL` set it runs as its own deployment.
"""
