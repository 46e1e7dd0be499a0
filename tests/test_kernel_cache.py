"""Where compiled kernels are kept (service/kernels/cache.py): the setting, else $TRITON_CACHE_DIR, else under
kvmemo's cache root beside the plans; an unwritable directory never stops a boot; what a boot compiled is
what appeared in the directory. (That a warm GPU boot compiles nothing: tests/memory/test_gpu_boot.py.)"""

import logging
import os
import tempfile

import pytest

from service.kernels.cache import TRITON_ENV, use_kernel_cache


@pytest.fixture(autouse=True)
def triton_env(monkeypatch, tmp_path):
    monkeypatch.delenv(TRITON_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # fallback directories land here
    # monkeypatch also restores TRITON_CACHE_DIR, which use_kernel_cache sets for Triton


def test_the_default_is_beside_the_plans(tmp_path):
    cache = use_kernel_cache(None)
    assert cache.directory == tmp_path / "xdg" / "kvmemo" / "kernels" and cache.directory.is_dir()
    assert os.environ[TRITON_ENV] == str(cache.directory)


def test_the_setting_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(TRITON_ENV, str(tmp_path / "from-env"))
    assert use_kernel_cache(None).directory == tmp_path / "from-env"
    assert use_kernel_cache(str(tmp_path / "mounted")).directory == tmp_path / "mounted"
    assert os.environ[TRITON_ENV] == str(tmp_path / "mounted")


def test_compilations_are_the_entries_that_appeared(tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "earlier-kernel").mkdir()
    cache = use_kernel_cache(str(tmp_path / "k"))
    assert cache.entries_at_start == 1 and cache.compiled() == 0
    for name in ("kernel-a", "launcher-b"):
        (tmp_path / "k" / name).mkdir()
    assert cache.compiled() == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_directory_falls_back_to_a_temporary_one_with_a_warning(tmp_path, caplog):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with caplog.at_level(logging.WARNING):
            cache = use_kernel_cache(str(locked))
    finally:
        locked.chmod(0o700)
    assert cache.directory != locked and cache.directory.is_dir()
    assert f"kernel cache {locked} is not writable" in caplog.text


def test_a_file_in_the_way_falls_back_too(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    with caplog.at_level(logging.WARNING):
        cache = use_kernel_cache(str(tmp_path / "file" / "kernels"))
    assert cache.directory.is_dir() and "is not writable" in caplog.text
