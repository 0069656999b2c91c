"""The REST API under /api/v1, one router per resource (FastAPI's "bigger applications" layout).

- ``deps``: what routes depend on (the store, settings, front cache, latency catalogue, tokens);
- ``schemas``: request and response models, the path prefix and number limits;
- ``errors``: the exception handlers (not found → 404, conflict → 409, input errors → 422);
- ``jobs``, ``schedules``, ``targets`` (targets, predictors, measurement uploads, fits),
  ``models`` (the zoo and installed plugins), ``datasets`` (registered datasets), ``ops``
  (/healthz, /metrics): the routers ``service.app.create_app`` includes.
"""
