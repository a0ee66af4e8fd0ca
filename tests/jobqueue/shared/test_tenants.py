"""A job's tenant: checked at submit, kept in the job's options and in what events show."""

from __future__ import annotations

import json

import pytest

from jobqueue.client.jobs import prepare_job
from jobqueue.errors import SubmitError
from jobqueue.shared.tenants import check_tenant


@pytest.mark.parametrize("name", ["acme", "Acme.Corp_2", "a", "x" * 64])
def test_a_tenant_name_of_letters_digits_and_dots_is_taken(name):
    assert check_tenant(name) == name


@pytest.mark.parametrize("name", ["", "-acme", "acme corp", "x" * 65, "a/b", 7, "acme\n"])
def test_a_tenant_name_outside_the_alphabet_is_refused_naming_the_rule(name):
    with pytest.raises(SubmitError, match="tenant must be"):
        check_tenant(name)


def test_a_jobs_tenant_is_in_its_options_and_in_what_its_events_show():
    kwargs, send_options = prepare_job("simulation", {"steps": 1}, is_redis=True, tenant="acme")
    assert kwargs["options"]["tenant"] == "acme"
    assert json.loads(send_options["kwargsrepr"])["tenant"] == "acme"


def test_a_job_without_a_tenant_has_no_tenant_option():
    kwargs, _ = prepare_job("simulation", {"steps": 1}, is_redis=True)
    assert "tenant" not in kwargs["options"]
