import pytest

from geofm.io import atomic_path


def test_atomic_path_renames_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent == target.parent
        tmp.write_bytes(b"abc")
        assert not target.exists()
    assert target.read_bytes() == b"abc"
    assert list(target.parent.iterdir()) == [target]


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_output_honours_the_umask(tmp_path):
    """Outputs are readable by a group/others as the umask allows (mkstemp alone gives 0600)."""
    import os
    import stat

    for umask, expected in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        old = os.umask(umask)
        try:
            target = tmp_path / f"out{umask:o}.bin"
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"x")
        finally:
            os.umask(old)
        assert stat.S_IMODE(target.stat().st_mode) == expected, (oct(umask), oct(target.stat().st_mode))
