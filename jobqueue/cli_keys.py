"""``jobqueue keys``: the monitor's API keys (create, list, revoke), worked on its store
(``JOBQUEUE_MONITOR_DB``) directly; every change is recorded in its audit trail. Registered on
the ``jobqueue`` group by :mod:`jobqueue.cli`."""

from __future__ import annotations

from typing import Any

import click

from jobqueue.cli_common import dump, load_settings, needs_extra


@click.group()
def keys() -> None:
    """API keys of the monitor (in its store, JOBQUEUE_MONITOR_DB): create, list, revoke."""


def _key_store() -> Any:
    with needs_extra("API keys", "monitor"):
        from monitor.store import Store

    return Store.from_settings(load_settings())


def _audit_cli(store: Any, action: str, target: str, detail: str = "") -> None:
    """Record a key change made here in the monitor's audit trail (subject ``cli:<user>``)."""
    import getpass
    import time

    from monitor.store.access import add_audit

    with store.write() as tx:
        add_audit(tx.session, [{"at": time.time(), "subject": f"cli:{getpass.getuser()}", "role": "admin",
                                "tenant": None, "address": "", "action": action, "target": target,
                                "outcome": "ok", "status": 200, "detail": detail}])


@keys.command("create")
@click.option("--role", type=click.Choice(["viewer", "operator", "admin"]), required=True)
@click.option("--name", default="", help="What the key is for (shown in lists).")
@click.option("--tenant", default=None, help="The tenant the key's jobs belong to.")
@click.option("--expires", default=None, help="Lifetime, e.g. 90d, 12h, 30m (default: never).")
def keys_create(role: str, name: str, tenant: str | None, expires: str | None) -> None:
    """Create a key and print it (once: only its hash is kept)."""
    import time

    from monitor.store.access import create_key, parse_duration

    try:
        expires_at = time.time() + parse_duration(expires) if expires else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires") from None
    store = _key_store()
    try:
        secret, info = create_key(store, role, name=name, tenant=tenant, expires_at=expires_at, created_by="cli")
        _audit_cli(store, "key.create", f"key:{info['id']}", f"role={role} tenant={tenant or '-'}")
    finally:
        store.close()
    click.echo(secret)
    click.echo(f"key {info['id']} ({role}{', tenant ' + tenant if tenant else ''}): shown once, store it now", err=True)


@keys.command("list")
def keys_list() -> None:
    """List the keys (never their secrets) as JSON."""
    from monitor.store.access import list_keys

    store = _key_store()
    try:
        click.echo(dump(list_keys(store)))
    finally:
        store.close()


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: every request and session with it is refused from now on."""
    from monitor.store.access import revoke_key

    store = _key_store()
    try:
        found = revoke_key(store, key_id)
        if found is None:
            raise click.ClickException(f"no key {key_id!r}")
        _audit_cli(store, "key.revoke", f"key:{key_id}")
    finally:
        store.close()
    click.echo(f"key {key_id} revoked")
