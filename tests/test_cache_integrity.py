"""The pieces crash safety rests on, in process: checksummed cache entries, a hash memo that
sees every edit, the sweep of dead writers' temporaries, and re-entrant run locks."""
import json
import os
import shutil
import subprocess
import sys


from compress.core.artifact import sweep_stale, write_json
from compress.core import cache
from compress.core.locks import locked
from conftest import BUILTIN


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_damaged_cache_entry_is_measured_again_with_one_warning(runs_dir, capsys):
    path = cache.cache_root() / "accuracy" / "k.json"
    cache.write_entry(path, {"acc": 0.845, "n": 1000})
    assert cache.read_entry(path, "measuring") == {"acc": 0.845, "n": 1000}
    text = path.read_text()
    path.write_text(text.replace("0.845", "0.945"))  # valid JSON, wrong content
    assert cache.read_entry(path, "measuring it") is None
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "damaged" in err and "measuring it again" in err
    assert not path.exists()
    path.write_text(text[: len(text) // 2])  # half a file
    assert cache.read_entry(path, "measuring") is None and not path.exists()


def test_the_hash_memo_sees_an_edit_that_keeps_size_and_mtime(runs_dir, tmp_path):
    model = tmp_path / "m"
    shutil.copytree(BUILTIN, model)
    before = cache.model_content_hash(model)
    assert cache.model_content_hash(model) == before  # served from the memo
    weights = model / "model.safetensors"
    st = weights.stat()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size, same mtime
    assert weights.stat().st_size == st.st_size and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert cache.model_content_hash(model) != before


def test_sweep_removes_dead_writers_temporaries_and_puts_back_an_old_version(tmp_path):
    dead = _dead_pid()
    (tmp_path / f".model.tmp-{dead}-ab12").mkdir()
    (tmp_path / f".gate.json.tmp-{dead}-cd34").write_text('{"half":')
    (tmp_path / f".x.old-{dead}-ef56").mkdir()  # a --force replacement killed between its renames
    (tmp_path / f".x.old-{dead}-ef56" / "manifest.json").write_text("{}")
    mine = tmp_path / f".y.tmp-{os.getpid()}-0000"  # a live writer's: kept
    mine.mkdir()
    removed = sweep_stale(tmp_path)
    assert sorted(p.name for p in removed) == sorted([f".model.tmp-{dead}-ab12", f".gate.json.tmp-{dead}-cd34"])
    assert (tmp_path / "x" / "manifest.json").exists() and mine.exists()


def test_json_writes_are_whole_and_keep_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_run_locks_are_reentrant_in_one_process_and_exclusive_across_processes(tmp_path, monkeypatch):
    code = ("import sys; from compress.core.locks import locked\n"
            "with locked(sys.argv[1], 'runs of x'): pass\n")
    monkeypatch.setenv("COMPRESS_LOCK_WAIT", "0")
    with locked(tmp_path, "runs of x"):
        with locked(tmp_path, "runs of x"):  # the artifact stage inside `compress run`
            p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
            assert p.returncode != 0 and "another compress process is writing runs of x" in p.stderr
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_a_fault_point_needs_both_variables(monkeypatch):
    from compress.core.faults import fault_point

    monkeypatch.setenv("COMPRESS_FAULT", "here")
    monkeypatch.delenv("COMPRESS_TESTING", raising=False)
    fault_point("here")  # a stray COMPRESS_FAULT alone must not kill a real run
    monkeypatch.setenv("COMPRESS_TESTING", "1")
    fault_point("elsewhere")


def test_a_clean_weight_scan_is_remembered_until_the_file_changes(runs_dir, tmp_path, monkeypatch):
    from compress.core import weights

    model = tmp_path / "m"
    shutil.copytree(BUILTIN, model)
    shard = model / "model.safetensors"
    weights.check_finite(shard)
    assert not list(cache.cache_root().rglob("*.json"))  # nothing written while inputs are checked
    cache.model_content_hash(model)  # the work starts: the clean scan is recorded
    assert list((cache.cache_root() / "finite").glob("*.json"))
    weights._first_nonfinite.cache_clear()
    calls = []
    monkeypatch.setattr(weights, "_first_nonfinite", lambda *a: calls.append(a))
    weights.check_finite(shard)
    assert calls == []  # served from the cache: no weights read
    os.utime(shard)  # any change to the file (here its times) means scanning again
    weights.check_finite(shard)
    assert len(calls) == 1
