"""Warm routing's rules, without a broker: which cold checkpoints a worker takes, who holds
what, what a job's checkpoint is, and the worker's own tracking."""

from __future__ import annotations

from jobqueue.shared.routing import model_queue
from jobqueue.shared.warm import (
    Peers,
    checkpoint_of,
    closed_queues,
    cold_order,
    cold_to_open,
    expected_load,
    peers_holding,
    read_peers,
)
from jobqueue.worker.warm import WarmState


def opened(cold: list[str], **kw: object) -> set[str]:
    args: dict[str, object] = {"grace": 2.0, "busy": False, "idle_for": 5.0, "closed_for": 5.0, "max_wait": 30.0}
    args.update(kw)
    return cold_to_open(cold, **args)  # type: ignore[arg-type]


def test_a_worker_takes_cold_checkpoints_only_after_a_grace_idle_and_not_those_an_idle_peer_holds():
    assert opened(["a", "b"], idle_for=1.0) == set()
    assert opened(["a", "b"], busy=True) == set()
    assert opened(["a", "b"]) == {"a", "b"}
    assert opened(["a", "b"], held_by_idle_peer=["a"]) == {"b"}


def test_warm_routing_off_or_a_long_warm_streak_opens_every_cold_checkpoint():
    assert opened(["a"], grace=0.0, busy=True, idle_for=0.0) == {"a"}
    assert opened(["a"], busy=True, closed_for=30.0, held_by_idle_peer=["a"]) == {"a"}


def test_the_closed_queues_are_the_cold_ones_not_opened():
    assert closed_queues("comfyui", ["a", "b", "c"], ["a"], ["b"]) == {model_queue("comfyui", "c")}


def test_only_fresh_idle_peers_count_as_holding_a_checkpoint():
    entries = {"me": {"loaded": ["m"], "idle": True, "at": 100.0},
               "idle": {"loaded": ["a"], "idle": True, "at": 99.0},
               "busy": {"loaded": ["b"], "idle": False, "at": 100.0},
               "dead": {"loaded": ["c"], "idle": True, "at": 50.0},
               "junk": "not an entry"}
    assert peers_holding(entries, "me", now=100.0, stale_after=5.0) == {"a"}
    # and the busy one's checkpoint is known as held by a busy worker; "me" ranks after "busy", "idle"
    assert read_peers(entries, "me", now=100.0, stale_after=5.0) == Peers(frozenset({"a"}), frozenset({"b"}), 2)


def test_a_cold_worker_prefers_checkpoints_nobody_holds_and_idle_workers_start_on_different_ones():
    assert cold_order(["a", "b", "c"], Peers(busy_held=frozenset({"a"}))) == ["b", "c", "a"]
    assert cold_order(["a", "b"], Peers(rank=0)) == ["a", "b"]
    assert cold_order(["a", "b"], Peers(rank=1)) == ["b", "a"]


def test_a_jobs_checkpoint_is_its_first_model_unless_it_is_routed_on_a_tag():
    assert checkpoint_of({"models": ["a", "lora"]}) == "a"
    assert checkpoint_of({"models": ["a"], "tags": ["t"]}) is None
    assert checkpoint_of(None) is None


def test_a_cold_job_expects_the_smallest_measured_load_unless_someone_has_it_loaded():
    assert expected_load("a", [(["b"], 4.0), ([], 3.0)]) == 3.0
    assert expected_load("a", [(["a"], 4.0), ([], 3.0)]) == 0.0
    assert expected_load("a", [([], None)]) == 0.0
    assert expected_load(None, [([], 3.0)]) == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_worker_tracks_the_last_successful_jobs_checkpoint_and_measures_the_load():
    clock = Clock()
    warm = WarmState(2.0, 30.0, clock=clock)
    # A cold job of a takes 5 s, then a warm one 1 s
    assert warm.started("j1", "comfyui", "a") is True
    clock.now += 5
    warm.finished("j1", ok=True)
    assert warm.loaded("comfyui") == ("a",) and warm.load_seconds("comfyui") is None
    assert warm.started("j2", "comfyui", "a") is False
    clock.now += 1
    warm.finished("j2", ok=True)
    assert warm.load_seconds("comfyui") == 4.0
    # A failed job leaves nothing loaded; a job without a checkpoint neither
    warm.started("j3", "comfyui", "b")
    warm.finished("j3", ok=False)
    assert warm.loaded("comfyui") == ()
    warm.started("j4", "comfyui", "a")
    warm.finished("j4", ok=True)
    warm.started("j5", "comfyui", None)
    warm.finished("j5", ok=True)
    assert warm.loaded("comfyui") == ()
    assert warm.capabilities("comfyui") == {"loaded": [], "load_seconds": warm.load_seconds("comfyui")}


def test_the_worker_opens_its_cold_queues_after_the_grace_and_when_its_peers_stop_holding_them():
    clock = Clock()
    warm = WarmState(2.0, 30.0, clock=clock)
    warm.started("j1", "comfyui", "a")
    assert warm.cold_to_open("comfyui", ["b"]) == set()  # busy
    warm.finished("j1", ok=True)
    clock.now += 1
    assert warm.cold_to_open("comfyui", ["b"]) == set()  # within the grace
    clock.now += 1.5
    assert warm.set_peers("comfyui", Peers(idle_held=frozenset({"b"}))) is True
    assert warm.cold_to_open("comfyui", ["b"]) == set()  # an idle peer holds b
    assert warm.set_peers("comfyui", Peers()) is True and warm.set_peers("comfyui", Peers()) is False
    assert warm.cold_to_open("comfyui", ["b"]) == {"b"}
