"""The store's schema, one Alembic revision at a time (``versions/``, run by ``env.py``).

Nothing here is run by hand: :func:`monitor.store.migrate.upgrade` applies the revisions when
a monitor opens its store, and ``jobqueue monitor --upgrade-only`` applies them alone. There is
no ``alembic.ini``; :func:`monitor.store.migrate.alembic_config` builds the configuration.

A change to the models (:mod:`monitor.store.models`, ``metric_totals`` and ``stats_hourly`` in
:mod:`monitor.metrics`) needs a new revision, or
``tests/monitor/store/test_migrations.py`` fails. To draft one from the models, against a
database at the newest revision::

    from alembic import command
    from monitor.metrics import totals  # registers every table on Base.metadata
    from monitor.store import Base, Store
    from monitor.store.migrate import alembic_config

    store = Store("sqlite:///draft.db")
    with store.engine.begin() as conn:
        config = alembic_config(conn, target_metadata=Base.metadata)
        command.revision(config, "what changed", autogenerate=True, rev_id="0002")

then read and fix the draft (Alembic cannot see expression indexes on SQLite; on SQLite,
column changes need ``op.batch_alter_table``).
"""
