"""Simultaneous users and a long soak on one PruneLens server: right answers, bad input refused, no leaks.

    python -m benchmarks.load                          # 10, then 30 simultaneous users (embedded model)
    python -m benchmarks.load --users 2 3              # any sizes from 1 to 64
    python -m benchmarks.load --soak 150               # 150 requests one after another, good and bad
    python -m benchmarks.load --model PATH --users 10  # a LLaVA checkpoint instead of the embedded model

Both modes start ``app.py --max-new-tokens 24`` on a free 127.0.0.1 port (``GRADIO_TEMP_DIR`` set to
a fresh folder inside the benchmark's own temp folder) and talk to its ``/compare`` endpoint with
``gradio_client``; nothing leaves the loopback interface, and the server is always terminated. The
benchmark's temp folder is removed after a clean run and kept (with the server's ``app.log``) otherwise.

``--users N [N ...]``: every user gets its own built-in scene (``generate_scene``; with 30 users, 30
distinct scenes). Each image's single-user answer (the reference) is asked once, alone; then for each
N, N users with their own clients ask at the same moment. One line per N: wall time, latency median /
p90 / worst (submission to answer, queue wait included), and ``k/N answers equal to the single-user
reference`` (the full model's answer and every method's). Exit status 1 if any answer differs or
fails. N is at most 64, the server queue's ``max_size``.

``--soak K``: K requests one after another, alternating a good comparison (over four scenes; each
image's first answer is its reference, later ones must equal it) with a bad one, in turn: unknown
method, budget 0, empty prompt, a text file as the image, a truncated PNG, a 5000-character prompt,
ground truth with an unknown object name (each bad case once per 14 requests). A bad request must
come back as an error with a message (``gradio_client`` raises, normally ``AppError``); gradio's
generic "upstream Gradio app has raised an exception" counts as refused but is flagged GENERIC.
After request 0 (idle server), every 50 requests and at the end it prints the server's resident
memory (VmRSS of the ``app.py`` process, MiB), the files under its ``GRADIO_TEMP_DIR`` and folders
there named like an export (``prunelens*`` / ``*export*``), and the ``prunelens-*`` entries in the
system temp folder with, of those, the per-session ``prunelens-exports-*`` folders (this benchmark's
own ``prunelens-load-*`` folders are left out; other PruneLens processes on the machine count too).
At the end: per bad case how it was refused and its first message, the longest error message,
whether any message contained the server's repository path, whether memory grew by more than 20%
from request 50 (request 0 for soaks of 50 or fewer) to the end and whether the temp files kept
growing. Exit status 1 if the server died, a request timed out, a good request failed or changed
its answer, or a bad one was accepted.

Every request is bounded (``--timeout`` seconds, default 300, queue wait included). Figures depend
on the machine (CPU model, cores, the model you pass): quote them with the machine, and never run
this while something else loads the CPU — a busy CPU inflates the latencies and can time requests out.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_USERS = 64  # the server queue's max_size (app/launch.py `launch`)
METHODS = "attention,diversity,adaptive"
PROMPT = "Describe the image."
GENERIC_ERROR = "upstream Gradio app has raised an exception"
SOAK_SCENES = ((901, "simple"), (902, "medium"), (903, "complex"), (904, "text"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model: str, port: int, tmp: Path) -> subprocess.Popen:
    """``app.py`` on 127.0.0.1:``port`` with its own ``GRADIO_TEMP_DIR``; returns once it listens."""
    gradio_tmp = tmp / "gradio"
    gradio_tmp.mkdir()
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_TEMP_DIR": str(gradio_tmp),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    log_path = tmp / "app.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--model", model, "--max-new-tokens", "24"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app.py exited:\n{log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    stop_app(proc)
    raise SystemExit("app.py did not start within 180 s")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


def log_tail(tmp: Path, chars: int = 2000) -> str:
    try:
        return (tmp / "app.log").read_text()[-chars:]
    except OSError:
        return ""


def make_client(url: str, timeout: float):
    from gradio_client import Client

    # Downloads off (the endpoint returns JSON); telemetry is off via GRADIO_ANALYTICS_ENABLED (main).
    return Client(
        url,
        verbose=False,
        download_files=False,
        analytics_enabled=False,
        httpx_kwargs={"timeout": min(timeout, 60.0)},
    )


def ask(client, image: Path, prompt: str, methods: str, budget, truth: str, timeout: float) -> dict:
    """One ``/compare`` call, bounded by ``timeout`` seconds (``TimeoutError`` past it)."""
    from gradio_client import handle_file

    job = client.submit(handle_file(str(image)), prompt, methods, budget, truth, api_name="/compare")
    try:
        return job.result(timeout=timeout)
    except TimeoutError:
        job.cancel()
        raise TimeoutError(f"no answer within {timeout:g} s") from None


def answers(payload: dict) -> dict[str, str]:
    """The full model's answer and each method's: what must not change under load."""
    return {"full": payload["full"]["text"], **{m: v["answer"]["text"] for m, v in payload["methods"].items()}}


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# -- simultaneous users ------------------------------------------------------------------------------


def run_users(url: str, proc: subprocess.Popen, tmp: Path, counts: list[int], budget: int, timeout: float) -> int:
    from scenes import generate_scene

    images = []
    for i in range(max(counts)):
        path = tmp / f"user{i}.png"
        generate_scene(500 + i, ("simple", "medium", "complex")[i % 3]).image.save(path)
        images.append(path)

    single = make_client(url, timeout)
    try:
        reference = [answers(ask(single, path, PROMPT, METHODS, budget, "", timeout)) for path in images]
    except Exception as err:  # without references there is nothing to compare
        print(f"a single-user reference request failed: {type(err).__name__}: {err}"[:300])
        return 1
    finally:
        single.close()
    print(f"references: {len(images)} distinct scenes, each asked once by a single user")

    def one(client, i: int) -> tuple[bool, float, str]:
        start = time.perf_counter()
        try:
            out = ask(client, images[i], PROMPT, METHODS, budget, "", timeout)
        except Exception as err:  # every failure is reported, none may pass
            return False, time.perf_counter() - start, f"{type(err).__name__}: {err}"[:200]
        same = answers(out) == reference[i]
        return same, time.perf_counter() - start, "" if same else "answer differs from the reference"

    failed = False
    for n in counts:
        with ThreadPoolExecutor(n) as pool:
            clients = list(pool.map(lambda _: make_client(url, timeout), range(n)))
            start = time.perf_counter()
            results = list(pool.map(one, clients, range(n)))
            wall = time.perf_counter() - start
            for client in clients:
                client.close()
        latencies = [t for _, t, _ in results]
        good = sum(ok for ok, _, _ in results)
        print(
            f"{n} simultaneous users: wall {wall:.1f} s, latency median {statistics.median(latencies):.1f} s / "
            f"p90 {nearest_rank(latencies, 0.9):.1f} s / worst {max(latencies):.1f} s; "
            f"{good}/{n} answers equal to the single-user reference"
        )
        for i, (ok, _, why) in enumerate(results):
            if not ok:
                print(f"  user {i}: {why}")
        failed |= good < n
        if proc.poll() is not None:
            print(f"the server died (exit {proc.returncode}):\n{log_tail(tmp)}")
            return 1
    return 1 if failed else 0


# -- soak ----------------------------------------------------------------------------------------------


@dataclass
class BadCase:
    name: str
    image: Path
    prompt: str = PROMPT
    methods: str = METHODS
    budget: int = 64
    truth: str = ""
    refusals: list[str] = field(default_factory=list)  # "Type: message" per refusal
    accepted: int = 0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def temp_counts(gradio_tmp: Path) -> tuple[int, int, int, int]:
    """Files under GRADIO_TEMP_DIR, export-like folders there, and in the system temp folder the
    ``prunelens-*`` entries and, of those, the per-session ``prunelens-exports-*`` folders."""
    files = exports = 0
    for path in gradio_tmp.rglob("*"):
        if path.is_file():
            files += 1
        elif path.is_dir() and (path.name.startswith("prunelens") or "export" in path.name):
            exports += 1
    # prunelens-load-* are this benchmark's own folders (this run's and any other run's), not the server's
    system = [p for p in Path(tempfile.gettempdir()).glob("prunelens-*") if not p.name.startswith("prunelens-load-")]
    session_exports = sum(p.name.startswith("prunelens-exports-") and p.is_dir() for p in system)
    return files, exports, len(system), session_exports


def run_soak(url: str, proc: subprocess.Popen, tmp: Path, k: int, budget: int, timeout: float) -> int:
    from gradio_client.exceptions import AppError

    from scenes import generate_scene

    good_images = []
    for seed, complexity in SOAK_SCENES:
        path = tmp / f"soak-{complexity}-{seed}.png"
        generate_scene(seed, complexity).image.save(path)
        good_images.append(path)
    not_image = tmp / "not-an-image.png"
    not_image.write_text("this is a text file, not a picture\n" * 20)
    truncated = tmp / "truncated.png"
    truncated.write_bytes(good_images[2].read_bytes()[: good_images[2].stat().st_size // 2])
    image = good_images[0]
    bad = [
        BadCase("unknown method", image, methods="attention,no-such-method"),
        BadCase("budget 0", image, budget=0),
        BadCase("empty prompt", image, prompt=""),
        BadCase("text file as image", not_image),
        BadCase("truncated PNG", truncated),
        BadCase("5000-char prompt", image, prompt=("Describe the image. " * 250)[:5000]),
        BadCase("unknown ground-truth object", image, truth="circle, unicorn"),
    ]

    gradio_tmp = tmp / "gradio"
    samples: dict[int, tuple[float, int, int, int, int]] = {}

    def sample(i: int) -> None:
        samples[i] = (rss_mib(proc.pid), *temp_counts(gradio_tmp))
        rss, files, exports, system, session_exports = samples[i]
        print(
            f"request {i:4d}: server RSS {rss:.0f} MiB, {files} files under GRADIO_TEMP_DIR "
            f"({exports} export folders), {system} prunelens-* in {tempfile.gettempdir()} "
            f"({session_exports} prunelens-exports-* folders); "
            f"good ok {good_ok}, bad refused {bad_refused}, failures {len(failures)}"
        )

    reference: dict[Path, dict] = {}
    failures: list[str] = []
    good_ok = bad_refused = 0
    messages: list[str] = []
    client = make_client(url, timeout)
    died = False
    try:
        sample(0)
        for i in range(1, k + 1):
            if i % 2:  # good
                path = good_images[(i // 2) % len(good_images)]
                try:
                    out = answers(ask(client, path, PROMPT, METHODS, budget, "", timeout))
                except TimeoutError:
                    failures.append(f"request {i} (good, {path.name}): no answer within {timeout:.0f} s")
                    break
                except Exception as err:
                    failures.append(f"request {i} (good, {path.name}) failed: {type(err).__name__}: {err}"[:300])
                else:
                    if reference.setdefault(path, out) == out:
                        good_ok += 1
                    else:
                        failures.append(f"request {i} (good, {path.name}): answer differs from its first answer")
            else:
                case = bad[(i // 2 - 1) % len(bad)]
                try:
                    ask(client, case.image, case.prompt, case.methods, case.budget, case.truth, timeout)
                except TimeoutError:
                    failures.append(f"request {i} (bad: {case.name}): no answer within {timeout:.0f} s")
                    break
                except Exception as err:  # a refusal; AppError is the expected kind
                    message = str(err)
                    messages.append(message)
                    kind = "AppError" if isinstance(err, AppError) else type(err).__name__
                    case.refusals.append(f"{kind}: {message}")
                    if message.strip():
                        bad_refused += 1
                    else:
                        failures.append(f"request {i} (bad: {case.name}): refused without a message ({kind})")
                else:
                    case.accepted += 1
                    failures.append(f"request {i} (bad: {case.name}): accepted, no error")
            if proc.poll() is not None:
                died = True
                failures.append(f"the server died after request {i} (exit {proc.returncode})")
                break
            if i % 50 == 0 or i == k:
                sample(i)
    finally:
        client.close()

    if died:
        print(f"server log tail:\n{log_tail(tmp)}")
    last = max(samples)
    print(f"{good_ok} good requests answered consistently, {bad_refused} bad requests refused with a message")
    for case in bad:
        tried = len(case.refusals) + case.accepted
        if not tried:
            continue
        first = case.refusals[0] if case.refusals else "-"
        generic = " (GENERIC message)" if any(GENERIC_ERROR in r for r in case.refusals) else ""
        print(
            f"  {case.name}: refused {len(case.refusals)}/{tried}{generic}; first: {first[:140]!r}"
            + (f"; ACCEPTED {case.accepted}x" if case.accepted else "")
        )
    if messages:
        longest = max(len(m) for m in messages)
        leaks = sum(str(ROOT) in m for m in messages)
        generic = sum(GENERIC_ERROR in m for m in messages)
        print(
            f"error messages: longest {longest} characters; {leaks} contained the repository path {ROOT}; "
            f"{generic} were gradio's generic 'upstream ... raised an exception'"
        )
    base = 50 if k > 50 and 50 in samples else 0
    if base in samples and last != base:
        rss0, files0, *_ = samples[base]
        rss1, files1, *_ = samples[last]
        grew = rss1 > 1.2 * rss0
        print(
            f"memory from request {base} to {last}: {rss0:.0f} -> {rss1:.0f} MiB ({rss1 / rss0 - 1:+.1%}): "
            f"{'GREW by more than 20%' if grew else 'no growth over 20%'}"
            + (" (baseline is the idle server: warm-up counts)" if base == 0 else "")
        )
        print(
            f"files under GRADIO_TEMP_DIR from request {base} to {last}: {files0} -> {files1}: "
            f"{'kept growing' if files1 > files0 else 'not growing'}"
        )
    for failure in failures:
        print(f"FAIL {failure}")
    return 1 if failures else 0


def main(argv=None) -> int:
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # gradio_client's telemetry thread reads this
    os.environ["HF_HUB_OFFLINE"] = "1"
    from app.launch import EMBEDDED_MODEL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--users", type=int, nargs="+", default=[10, 30], help="simultaneous users, one run each")
    parser.add_argument("--soak", type=int, metavar="K", help="K requests one after another instead, good and bad")
    parser.add_argument("--budget", type=int, default=64, help="visual tokens kept per method")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request, queue wait included")
    args = parser.parse_args(argv)
    if any(not 1 <= n <= MAX_USERS for n in args.users):
        raise SystemExit(f"--users must be between 1 and {MAX_USERS} (the server queue's max_size)")
    if args.soak is not None and args.soak < 1:
        raise SystemExit("--soak needs at least 1 request")

    tmp = Path(tempfile.mkdtemp(prefix="prunelens-load-"))
    port = free_port()
    proc = start_app(args.model, port, tmp)
    url = f"http://127.0.0.1:{port}"
    print(f"app.py on {url}, model {args.model}, --max-new-tokens 24; temp folder {tmp}")
    status = 1
    try:
        if args.soak is not None:
            status = run_soak(url, proc, tmp, args.soak, args.budget, args.timeout)
        else:
            status = run_users(url, proc, tmp, args.users, args.budget, args.timeout)
        return status
    finally:
        stop_app(proc)
        if status == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp} (server log: app.log)")


if __name__ == "__main__":
    sys.exit(main())
