"""Fair share's rules on plain values: tenant queue names, the fetch order a worker asks the
broker for (weighted turns within a base queue's group), and where a tenant's job is routed."""

from __future__ import annotations

import pytest

from jobqueue.config import Settings
from jobqueue.errors import ConfigError
from jobqueue.shared.fairshare import FairOrder, route_for_tenant, split_tenant_queue, tenant_queue
from jobqueue.shared.tenants import TenantQuota, quota_for


def take(order: FairOrder, queues: list[str], backlog: dict[str, int], n: int) -> list[str]:
    """Simulate ``n`` fetches: the broker takes the first queue in the order that has a job."""
    taken = []
    for _ in range(n):
        source = next((q for q in order.order(queues) if backlog.get(q, 0) > 0), None)
        if source is None:
            break
        backlog[source] -= 1
        order.delivered(source)
        taken.append(source)
    return taken


def test_a_tenant_queue_names_its_tenant_and_splits_back_unambiguously():
    name = tenant_queue("comfyui.model.sd.x.safetensors", "acme.eu")
    assert name == "acme.eu/comfyui.model.sd.x.safetensors"
    assert split_tenant_queue(name) == ("acme.eu", "comfyui.model.sd.x.safetensors")
    assert split_tenant_queue("gpu0.m1") == (None, "gpu0.m1")


def test_a_tenants_job_goes_to_its_queue_only_under_fair_share():
    assert route_for_tenant("simulation", "acme", fair_share=True) == "acme/simulation"
    assert route_for_tenant("simulation", "acme", fair_share=False) == "simulation"
    assert route_for_tenant("simulation", None, fair_share=True) == "simulation"


def test_two_backlogged_tenants_alternate_instead_of_first_in_first_out():
    # Given tenant a with 10 queued jobs and tenant b with 3, on one service
    order = FairOrder(lambda tenant: 1)
    queues = ["gpu0", "simulation", "a/simulation", "b/simulation"]
    backlog = {"a/simulation": 10, "b/simulation": 3}
    # When a worker fetches 8 jobs
    taken = take(order, queues, backlog, 8)
    # Then b's 3 are among the first 6, in turns with a's
    assert taken[:6].count("b/simulation") == 3
    assert taken[6:] == ["a/simulation", "a/simulation"]


def test_weights_give_a_tenant_that_many_jobs_in_a_row_per_turn():
    order = FairOrder(lambda tenant: 3 if tenant == "big" else 1)
    queues = ["simulation", "big/simulation", "small/simulation"]
    taken = take(order, queues, {"big/simulation": 30, "small/simulation": 30}, 12)
    assert taken.count("big/simulation") == 9 and taken.count("small/simulation") == 3


def test_jobs_without_a_tenant_take_turns_as_one_more_member():
    order = FairOrder(lambda tenant: 1)
    queues = ["simulation", "a/simulation"]
    taken = take(order, queues, {"simulation": 5, "a/simulation": 5}, 4)
    assert sorted(taken) == ["a/simulation", "a/simulation", "simulation", "simulation"]


def test_a_tenant_that_comes_back_gets_its_turn_at_once_but_no_burst():
    # Given tenant a served alone for a long time
    order = FairOrder(lambda tenant: 1)
    queues = ["simulation", "a/simulation", "b/simulation"]
    backlog = {"a/simulation": 100}
    take(order, queues, backlog, 50)
    # When b queues 5 jobs
    backlog["b/simulation"] = 5
    taken = take(order, queues, backlog, 6)
    # Then b is served next, and then in turns (its idle time bought it nothing)
    assert taken[0] == "b/simulation"
    assert taken.count("b/simulation") == 3


def test_a_tenant_queue_whose_base_is_not_consumed_is_left_out_and_others_keep_their_place():
    order = FairOrder(lambda tenant: 1)
    assert order.order(["gpu0", "a/simulation", "comfyui", "a/comfyui"]) == ["gpu0", "comfyui", "a/comfyui"]
    assert order.order(["gpu0", "simulation"]) == ["gpu0", "simulation"]


def test_tenant_quotas_are_read_from_one_setting_with_a_default_entry():
    settings = Settings.from_env({"JOBQUEUE_TENANT_QUOTAS": "acme=queued:100,running:4,weight:2; *=queued:1000"})
    assert quota_for(settings, "acme") == TenantQuota(queued=100, running=4, weight=2)
    assert quota_for(settings, "other") == TenantQuota(queued=1000)
    assert quota_for(settings, None) == TenantQuota() and quota_for(settings, "x").weight == 1
    assert quota_for(Settings.from_env({}), "acme").queued is None
    # (a tenant named twice: its last entry counts)
    assert quota_for(Settings.from_env({"JOBQUEUE_TENANT_QUOTAS": "a=queued:1;a=running:2"}), "a").running == 2


@pytest.mark.parametrize("bad", ["acme", "acme=queued:0", "acme=queued:x", "acme=speed:3", "=queued:1",
                                 "acme=queued:1 running:2"])
def test_a_malformed_tenant_quota_is_refused_naming_the_variable(bad):
    with pytest.raises(ConfigError, match="JOBQUEUE_TENANT_QUOTAS"):
        Settings.from_env({"JOBQUEUE_TENANT_QUOTAS": bad})
