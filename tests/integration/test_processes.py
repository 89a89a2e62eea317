"""Processes, signals and threads (issue 5, "Processes"): fork without
exec, exec and the process filter, the host's own SIGPROF, blocked
signals, sigaltstack, threads older than the agent, thousands of short
threads, vfork/posix_spawn, EINTR, a stress run, and the ways a process
ends. Each test runs one of tests/programs/proc_*.c."""
import os
import pathlib
import re
import subprocess
import sys
import time

import pytest

from agentrun import (AGENT, BUILD, ROOT, agent_env, function_names, profile_files, run, top,
                      traces)

sys.path.insert(0, str(ROOT / "tests" / "receiver"))

PROGRAMS = BUILD / "programs"


def env_for(tmp_path, hz=1000, alloc="0", extra=None, output=True):
    env = {
        "PYROSCOPE_PROFILING_INTERVAL": f"{1000 // hz}ms",
        "PYROSCOPE_UPLOAD_INTERVAL": "1s",
        "PYROSCOPE_PROFILER_ALLOC": alloc,
        "PYROSCOPE_LOG_LEVEL": "warn",
    }
    env.update(extra or {})
    return agent_env(env, output_dir=tmp_path if output else None)


def by_pid(output_dir, kind):
    """{pid: [files]} of one profile kind."""
    out = {}
    for f in profile_files(output_dir, kind):
        out.setdefault(int(f.name.split(".")[1]), []).append(f)
    return out


def same_output(argv, env, timeout=120, sort=False):
    """Runs argv without and with the agent; the outputs must match."""
    plain = run(argv, agent_env(preload=False), timeout=timeout)
    profiled = run(argv, env, timeout=timeout)
    a, b = plain.stdout, profiled.stdout
    if sort:
        a, b = sorted(a.splitlines()), sorted(b.splitlines())
    assert b == a, f"output changed:\n{profiled.stdout}\nstderr:\n{profiled.stderr}"
    return profiled


# ---- 1. fork without exec ------------------------------------------------------

def test_fork_child_profiles_itself(tmp_path):
    p = same_output([PROGRAMS / "proc_fork", "work", 2, 0.6], env_for(tmp_path), sort=True)
    assert "children ok: 2 of 2" in p.stdout
    cpu = by_pid(tmp_path, "cpu")
    assert len(cpu) == 3, cpu  # the parent and its two children
    parent = min(cpu)  # forked children get higher pids (no wrap in a test)
    parent_names = function_names(cpu[parent])
    assert "parent_only_work" in parent_names
    assert "child_only_work" not in parent_names
    for pid, files in cpu.items():
        if pid == parent:
            continue
        names = function_names(files)
        # its own work, and nothing of what the parent's threads did
        assert "child_only_work" in names, (pid, names)
        assert "parent_only_work" not in names, (pid, names)
        total, rows = top(files, "cpu")
        assert 0.3 <= total <= 1.2, (pid, total)
        seqs = sorted(int(f.name.split(".")[3]) for f in files)
        assert seqs == list(range(1, len(seqs) + 1)), seqs


def test_fork_child_pushes_its_own_profiles(tmp_path):
    from receiver import Receiver
    rec = Receiver()
    rec.start(tmp_path / "rec")
    try:
        env = env_for(tmp_path / "files", extra={"PYROSCOPE_SERVER_ADDRESS": rec.url,
                                                  "PYROSCOPE_APPLICATION_NAME": "forker"})
        run([PROGRAMS / "proc_fork", "work", 1, 0.6], env)
        cpu = [path for labels, name, path in rec.profiles() if name == "process_cpu"]
        assert cpu, rec.requests()
        parents = children = 0
        for path in cpu:
            names = function_names([path])
            assert not ({"parent_only_work", "child_only_work"} <= names), names
            parents += "parent_only_work" in names
            children += "child_only_work" in names
        assert parents and children, (parents, children)
        assert all(r["status"] == 200 for r in rec.requests())
    finally:
        rec.stop()


def test_fork_while_threads_allocate(tmp_path):
    """The deadlock hunt: fork from one thread while three others
    malloc/realloc/free and mmap; children allocate, start threads and
    leave by exit() or _exit()."""
    p = same_output([PROGRAMS / "proc_fork", "hunt", 120],
                    env_for(tmp_path, alloc="64k"), timeout=300)
    assert "forks: 120 ok, 0 hung, 0 failed" in p.stdout


@pytest.fixture(scope="module")
def strerror_shim(tmp_path_factory):
    """Widens, without changing, what libcurl does on a connection error:
    __xpg_strerror_r, which takes glibc's locale lock. The shim holds it in
    bursts for ~50 ms and waits in poll() between bursts, as libcurl waits
    between its steps."""
    src = tmp_path_factory.mktemp("shim") / "shim.c"
    src.write_text(r'''
#define _GNU_SOURCE
#include <dlfcn.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>
int __xpg_strerror_r(int errnum, char *buf, size_t n);
int __xpg_strerror_r(int errnum, char *buf, size_t n)
{
	static int (*real)(int, char *, size_t);
	if (!real)
		real = (int (*)(int, char *, size_t))dlsym(RTLD_NEXT, "__xpg_strerror_r");
	char tmp[128];
	for (int burst = 0; burst < 150; burst++) {
		for (int i = 0; i < 2000; i++)
			(void)strerror_r(errnum, tmp, sizeof(tmp));
		poll(NULL, 0, 0);
	}
	return real(errnum, buf, n);
}
''')
    so = src.with_suffix(".so")
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"],
                   check=True)
    return so


def test_fork_never_inherits_a_lock_held_by_the_uploader(tmp_path, strerror_shim):
    """The exit hang: a child forked while the uploader was inside
    strerror (libcurl, on every connection error) inherited glibc's locale
    lock held, and hung in freelocale (libp11-kit's destructor at exit).
    The fork gate keeps agent threads out of such code across a fork."""
    env = env_for(tmp_path, extra={"PYROSCOPE_SERVER_ADDRESS": "http://127.0.0.1:1",
                                   "PYROSCOPE_UPLOAD_INTERVAL": "300ms",
                                   "PYROSCOPE_LOG_LEVEL": "error"}, output=False)
    env["LD_PRELOAD"] = f"{strerror_shim} {AGENT}"
    p = run([PROGRAMS / "proc_fork", "locale", 100000, 3.5], env, timeout=120, check=False)
    assert "locale children: 0 hung, 0 failed" in p.stdout, p.stdout + p.stderr
    forked = int(re.search(r"(\d+) forked", p.stderr).group(1))
    assert forked > 50, p.stderr


# ---- 2. exec and the process filter --------------------------------------------

def test_exec_children_filtered_out_are_inert(tmp_path):
    env = env_for(tmp_path, hz=100, extra={"PYROAGENT_PROCESS_FILTER": "proc_exec",
                                            "PYROSCOPE_LOG_LEVEL": "info"})
    p = same_output([PROGRAMS / "proc_exec", 1], env)
    # the shell and its sleeping child: the main thread only
    assert p.stdout.count("sleep threads: 1") == 2, p.stdout
    assert p.stdout.count("shell threads: 1") == 2, p.stdout
    names = {f.name.split(".")[0] for f in tmp_path.glob("*.pb.gz")}
    assert names == {"proc_exec"}, names
    # only this process speaks
    pids = {m.group(1) for m in re.finditer(r"^pyroagent\[(\d+)\]", p.stderr, re.M)}
    assert len(pids) == 1, p.stderr


def test_exec_children_without_filter_are_profiled(tmp_path):
    """The same run without the filter: the shell has an agent thread, and
    its children write files (so the check above can fail; dash itself
    leaves by _exit, which skips the final profile)."""
    p = run([PROGRAMS / "proc_exec", 1], env_for(tmp_path, hz=100))
    assert "shell threads: 2" in p.stdout, p.stdout
    assert any(f.name.startswith("sleep.") for f in tmp_path.glob("*.pb.gz"))


def test_process_filter_matches_invocation_name_or_executable(tmp_path):
    link = tmp_path / "alias_name"
    link.symlink_to(PROGRAMS / "proc_exit")
    for i, (filt, selected) in enumerate([("proc_exit", True), ("alias_name", True),
                                          ("sh, other", False)]):
        out = tmp_path / f"out{i}"
        out.mkdir()
        env = env_for(out, extra={"PYROAGENT_PROCESS_FILTER": filt,
                                  "PYROSCOPE_LOG_LEVEL": "info",
                                  "PYROSCOPE_LABELS": "bad-name=1"})
        p = run([link, "_exit"], env, check=False)
        assert p.returncode == 5
        assert ("profiling" in p.stderr) == selected, (filt, p.stderr)
        # a process that profiles, by either name, also says what was
        # wrong with its settings; one that does not stays silent
        assert ("PYROSCOPE_LABELS" in p.stderr) == selected, (filt, p.stderr)


def test_itimer_never_reaches_an_exec_child(tmp_path):
    """ITIMER_PROF survives exec (PITFALLS 4): a forked child profiling
    itself with the itimer disarms it before exec, so the new program (a
    filtered shell, SIGPROF at SIG_DFL) is not killed by it."""
    env = env_for(tmp_path, extra={"PYROAGENT_PROCESS_FILTER": "proc_exec",
                                   "PYROSCOPE_PROFILER_EVENT": "itimer"})
    p = same_output([PROGRAMS / "proc_exec", 2], env)
    assert p.stdout.count("fork+exec: exit 0") == 2


# ---- 3. the host's own SIGPROF -------------------------------------------------

@pytest.mark.parametrize("how", ["handler", "signal", "raw"])
def test_host_with_its_own_sigprof_profiler(tmp_path, how):
    env = env_for(tmp_path, extra={"PYROAGENT_PROCESS_FILTER": "proc_sigprof"})
    p = same_output([PROGRAMS / "proc_sigprof", how], env)
    assert "ticks counted, signals not asked for: 0" in p.stdout
    assert "CPU sampling stops" in p.stderr, p.stderr
    assert p.stderr.count("CPU sampling stops") == 1
    # the first second was sampled; heap profiling went on
    assert profile_files(tmp_path, "cpu")


def test_host_ignoring_sigprof(tmp_path):
    env = env_for(tmp_path, extra={"PYROAGENT_PROCESS_FILTER": "proc_sigprof"})
    p = same_output([PROGRAMS / "proc_sigprof", "ignore"], env)
    assert "disposition: SIG_IGN" in p.stdout
    for how in ("fork+exec", "posix_spawn", "popen"):
        assert f"{how} shell: exited" in p.stdout, p.stdout
    assert "self: survived" in p.stdout
    # SIG_IGN is the host's view: the agent still samples
    assert "CPU sampling stops" not in p.stderr
    assert "ignored_spin" in function_names(profile_files(tmp_path, "cpu"))


# ---- 4, 5, 6: blocked signals, sigaltstack, threads older than the agent -------

def test_threads_blocking_sigprof(tmp_path):
    same_output([PROGRAMS / "proc_blocked", 0.6], env_for(tmp_path))
    assert "blocked_work" in function_names(profile_files(tmp_path, "cpu"))


def test_handler_on_sigaltstack(tmp_path):
    p = same_output([PROGRAMS / "proc_altstack", 16], env_for(tmp_path))
    assert "handled 16 signals" in p.stdout
    stacks = traces(profile_files(tmp_path, "cpu"), "cpu")
    through = [s for s in stacks if "handler_work" in s]
    assert through, stacks[:5]
    # unwound through the handler's signal frame into the interrupted code
    assert any(s[s.index("handler_work"):][:4] ==
               ["handler_work", "on_usr1", "__restore_rt", "interrupted_loop"]
               for s in through), through[:5]


def test_threads_started_before_the_agent(tmp_path):
    env = env_for(tmp_path, hz=100)
    env.pop("LD_PRELOAD")
    p = run([PROGRAMS / "proc_late", AGENT, 2.0], env)
    assert "late agent: ok" in p.stdout
    total, rows = top(profile_files(tmp_path, "cpu"), "cpu")
    # two busy threads, armed at load: most of ~2 x 2 s of CPU
    assert rows.get("early_thread_work", (0, 0))[1] >= 1.0, rows


# ---- 7. thousands of short threads --------------------------------------------

def test_thousands_of_short_threads(tmp_path):
    argv = [PROGRAMS / "proc_threads", 20000, 4]
    plain = run(argv, agent_env(preload=False), timeout=120)
    p = same_output(argv, env_for(tmp_path, alloc="64k"))
    timers = int(re.search(r"timers: (-?\d+)", p.stderr).group(1))
    if timers >= 0:
        # the main thread's, and no timer of a thread that ended
        assert timers <= 2, p.stderr
    rss = int(re.search(r"VmHWM: (\d+)", p.stderr).group(1))
    base = int(re.search(r"VmHWM: (\d+)", plain.stderr).group(1))
    assert rss - base < 96 * 1024, (rss, base)


# ---- 8. vfork and posix_spawn ------------------------------------------------------

def test_vfork_and_posix_spawn(tmp_path):
    env = env_for(tmp_path, alloc="64k", extra={"PYROAGENT_PROCESS_FILTER": "proc_spawn"})
    p = same_output([PROGRAMS / "proc_spawn", 600], env, timeout=300)
    assert "posix_spawn: 600 of 600 ok, vfork: 600 of 600 ok" in p.stdout
    # the parent's agent kept working: samples to the end, one process
    assert set(by_pid(tmp_path, "cpu")) == set(by_pid(tmp_path, "memory"))
    assert len(by_pid(tmp_path, "cpu")) == 1
    assert "spawn_side_work" in function_names(profile_files(tmp_path, "memory"))
    # The vfork children's own 1 MiB blocks (allocated in main, before
    # exec, on the parent's memory) were never recorded as the parent's.
    stacks = traces(profile_files(tmp_path, "memory"), "alloc_space")
    assert not [s for s in stacks if s and s[0] == "main"], stacks[:5]


# ---- 10. EINTR -------------------------------------------------------------------------

@pytest.mark.parametrize("event", ["cpu", "itimer"])
def test_no_eintr_from_restartable_calls(tmp_path, event):
    env = env_for(tmp_path, extra={"PYROSCOPE_PROFILER_EVENT": event})
    p = same_output([PROGRAMS / "proc_eintr", 60], env)
    assert "EINTR: 0" in p.stdout


# ---- 11. stress -------------------------------------------------------------------------

def test_stress_fork_exec_dlopen_output_unchanged(tmp_path):
    env = env_for(tmp_path, alloc="64k", extra={"PYROAGENT_PROCESS_FILTER": "proc_stress"})
    p = same_output([PROGRAMS / "proc_stress", 5], env, timeout=300)
    assert "failed forks: 0, failed spawns: 0, failed dlopens: 0" in p.stdout
    assert "stress_round" in function_names(profile_files(tmp_path, "memory"))


# ---- 12. exit ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,code,final", [("thread", 3, True), ("main", 0, True),
                                              ("signal", 4, True), ("_exit", 5, False)])
def test_exit_paths(tmp_path, mode, code, final):
    """The final flush runs once, on whichever thread exits, bounded by
    PYROAGENT_EXIT_TIMEOUT even when the server never answers; _exit skips
    it."""
    from receiver import Receiver
    rec = Receiver(delay=30.0)
    rec.start(tmp_path / "rec")
    try:
        env = env_for(tmp_path / "files", alloc="64k", extra={
            "PYROSCOPE_SERVER_ADDRESS": rec.url, "PYROAGENT_EXIT_TIMEOUT": "1s",
            "PYROSCOPE_UPLOAD_INTERVAL": "30s"})
        t0 = time.monotonic()
        p = run([PROGRAMS / "proc_exit", mode], env, check=False, timeout=60)
        elapsed = time.monotonic() - t0
    finally:
        rec.stop()
    assert p.returncode == code, p.stderr
    files = profile_files(tmp_path / "files", "cpu")
    assert bool(files) == final, files
    if final:
        assert [f.name.split(".")[3] for f in files] == ["1"]
        assert "exit_work" in function_names(files)
    # the work is ~0.5 s of CPU; the exit adds at most the timeout
    assert elapsed < 0.5 + 1.0 + 4.0, elapsed


def test_short_runs_with_a_server_never_hang(tmp_path):
    """Many short processes (`timeout 10 true`: a fork and an exec), with
    the server answering, not answering, or refusing connections."""
    from receiver import Receiver
    ok, slow = Receiver(), Receiver(delay=30.0)
    ok.start(tmp_path / "ok")
    slow.start(tmp_path / "slow")
    try:
        for url in (ok.url, slow.url, "http://127.0.0.1:1"):
            env = env_for(tmp_path, output=False, extra={
                "PYROSCOPE_SERVER_ADDRESS": url, "PYROAGENT_EXIT_TIMEOUT": "500ms",
                "PYROSCOPE_LOG_LEVEL": "error"})
            for _ in range(4):
                t0 = time.monotonic()
                p = subprocess.run(["timeout", "10", "true"], env=env, timeout=30)
                assert p.returncode == 0
                assert time.monotonic() - t0 < 5.0
    finally:
        ok.stop()
        slow.stop()


def test_only_intended_exports():
    out = subprocess.run(["nm", "-D", "--defined-only", str(AGENT)], capture_output=True,
                         text=True, check=True).stdout
    names = {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}
    assert {"sigaction", "signal", "execve", "execvp", "posix_spawn", "poll"} <= names
