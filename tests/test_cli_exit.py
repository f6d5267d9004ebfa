"""The console script's exit (selfevolve.cli.main): it skips the interpreter's teardown, and must still keep the
exit code, the piped output, the atexit handlers and threads that are not daemons."""
import subprocess
import sys
import textwrap


def _main(tmp_path, argv: list[str], setup: str = "") -> subprocess.CompletedProcess:
    code = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from pathlib import Path
        out = Path({str(tmp_path)!r})
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        {setup}
        sys.argv = ["selfevolve"] + {argv!r}
        from selfevolve.cli import main
        main()
        """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_exit_keeps_code_output_and_atexit(tmp_path):
    ok = _main(tmp_path, ["--help"])
    assert ok.returncode == 0, ok.stderr
    assert "collect" in ok.stdout  # piped: it reached the pipe before the exit
    assert (tmp_path / "atexit").read_text() == "ran"

    bad = _main(tmp_path, ["status", "--set", "run.nmae=x"])
    assert bad.returncode == 2
    assert "config error" in bad.stderr and "run.nmae" in bad.stderr


def test_exit_waits_for_a_thread_that_is_not_a_daemon(tmp_path):
    setup = ("threading.Thread(target=lambda: (time.sleep(1.0), (out / 'thread').write_text('done')), "
             "daemon=False).start()")
    done = _main(tmp_path, ["--help"], setup)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "thread").read_text() == "done"
    assert (tmp_path / "atexit").read_text() == "ran"
