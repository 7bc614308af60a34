import json
import os

import pytest

from mixjax.io import atomic_path, write_json_atomic


def test_atomic_path_replaces_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "runs.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n" and os.listdir(tmp_path) == ["runs.csv"]  # no temporary left
    with atomic_path(target) as tmp, open(tmp, "w") as f:
        assert tmp.parent == tmp_path and tmp != target
        f.write("new\n")
    assert target.read_text() == "new\n" and os.listdir(tmp_path) == ["runs.csv"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # as a plain open() would create it
    write_json_atomic(tmp_path / "a.json", {"x": [1, 2]})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": [1, 2]}
    with atomic_path(target) as a, atomic_path(target) as b:
        assert a != b  # concurrent writers never share a temporary file
        a.write_text("a")
        b.write_text("b")
    assert target.read_text() == "a"  # the last replace wins: b finished first, then a
