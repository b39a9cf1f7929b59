"""A dead process's build lock on DeepSpeed's CPU op must not hang every later training start."""
import logging
import os
import subprocess
import threading
import time

from train._deepspeed import LOCK_CHECK_S, wait_for_build_lock


def _lock(build_dir, age_s: float):
    lock = build_dir / "lock"
    lock.touch()
    past = time.time() - age_s
    os.utime(lock, (past, past))
    return lock


def _release_later(lock, after_s: float) -> threading.Timer:
    timer = threading.Timer(after_s, lambda: lock.unlink(missing_ok=True))
    timer.start()
    return timer


def test_no_lock_returns_at_once(tmp_path):
    started = time.monotonic()
    wait_for_build_lock(tmp_path)
    assert time.monotonic() - started < 1


def test_a_lock_left_by_a_killed_process_is_removed_with_a_warning(tmp_path, caplog):
    lock = _lock(tmp_path, LOCK_CHECK_S + 50)  # nobody works in the folder: its holder is dead
    with caplog.at_level(logging.WARNING, logger="attune.train"):
        wait_for_build_lock(tmp_path, poll_s=0.05)
    assert not lock.exists()
    assert "no build running: a process was killed while it held it" in caplog.text


def test_a_fresh_lock_is_waited_for_until_its_holder_releases_it(tmp_path, caplog):
    lock = _lock(tmp_path, 0)  # a process checking the op holds it for milliseconds
    timer = _release_later(lock, 0.3)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="attune.train"):
        wait_for_build_lock(tmp_path, poll_s=0.05)
    timer.join()
    assert time.monotonic() - started >= 0.25 and "removing" not in caplog.text


def test_an_old_lock_is_kept_while_a_build_runs_in_the_folder(tmp_path, caplog):
    lock = _lock(tmp_path, LOCK_CHECK_S + 50)
    build = subprocess.Popen(["sleep", "30"], cwd=tmp_path)  # ninja and the compiler run in the build folder
    try:
        timer = _release_later(lock, 0.5)
        with caplog.at_level(logging.WARNING, logger="attune.train"):
            wait_for_build_lock(tmp_path, poll_s=0.05)
        timer.join()
    finally:
        build.kill()
        build.wait()
    assert "removing" not in caplog.text  # the build's own release ended the wait
