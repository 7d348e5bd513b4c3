"""kvmesh up's supervisor: a process that dies starts again after a backoff that doubles while it
keeps crashing, up to a cap, and starts afresh after a healthy run; it never gives up. Real child
processes, a fake clock."""

import sys

import pytest

from kvmesh.cli.supervisor import Backoff, Supervisor
from tests.support.waiting import wait_for

CRASHES = [sys.executable, "-c", "import sys; print('boom', flush=True); sys.exit(3)"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("crashes_in_a_row", "delay_s"), [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (7, 30.0), (8, 30.0), (200, 30.0)]
)
def test_the_backoff_doubles_up_to_its_cap(crashes_in_a_row, delay_s):
    assert Backoff(initial_s=0.5, cap_s=30.0).delay_s(crashes_in_a_row) == delay_s


@pytest.fixture
def supervisor(tmp_path):
    clock = FakeClock()
    supervisor = Supervisor(tmp_path, backoff=Backoff(initial_s=0.5, cap_s=4.0, healthy_s=60.0), clock=clock)
    yield supervisor, clock
    supervisor.stop(timeout_s=5)


def crash_and_wait(supervisor, child):
    wait_for(lambda: child.process.poll() is not None, what="the child's exit")
    assert supervisor.newly_dead() == [child]
    assert supervisor.newly_dead() == []  # told once


def test_a_process_that_keeps_crashing_is_restarted_ever_later_and_never_given_up(supervisor):
    supervisor, clock = supervisor
    child = supervisor.start_program("crashy", CRASHES)
    for restarts, delay_s in enumerate([0.5, 1.0, 2.0, 4.0, 4.0, 4.0], start=1):
        crash_and_wait(supervisor, child)
        assert child.restart_at_s == clock.now + delay_s
        clock.now += delay_s - 0.01
        assert supervisor.restart_due() == []  # not before its time
        clock.now += 0.01
        assert supervisor.restart_due() == [child]
        assert child.restarts == restarts
    wait_for(lambda: child.log.read_text().count("boom") == 7, what="the seventh run")  # each run's, appended


def test_a_process_that_ran_a_healthy_period_starts_its_backoff_afresh(supervisor):
    supervisor, clock = supervisor
    child = supervisor.start_program("crashy", CRASHES)
    for _ in range(3):
        crash_and_wait(supervisor, child)
        clock.now = child.restart_at_s
        supervisor.restart_due()
    crash_and_wait(supervisor, child)
    assert child.crashes_in_a_row == 4
    clock.now = child.restart_at_s
    supervisor.restart_due()
    clock.now += 60.0  # it stayed up that long before this crash
    crash_and_wait(supervisor, child)
    assert child.crashes_in_a_row == 1
    assert child.restart_at_s == clock.now + 0.5


def test_children_are_restarted_each_on_its_own_schedule(supervisor):
    supervisor, clock = supervisor
    steady = supervisor.start_program("steady", [sys.executable, "-c", "import time; time.sleep(60)"])
    crashy = supervisor.start_program("crashy", CRASHES)
    crash_and_wait(supervisor, crashy)
    clock.now = crashy.restart_at_s
    assert supervisor.restart_due() == [crashy]
    assert steady.process.poll() is None and steady.restarts == 0
