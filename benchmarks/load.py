"""Ten simultaneous users on one PruneLens server: everyone gets the right answers, nobody crashes it.

    python -m benchmarks.load                         # embedded model
    python -m benchmarks.load --model PATH --users 10

Starts ``app.py`` on a free loopback port, asks every user's question once alone (the reference),
then all of them at once through ``gradio_client`` (the ``compare`` endpoint), and checks that each
concurrent answer equals its reference. Prints per-user latency. Requests are bounded in number and
time and only go to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(model: str, port: int, log_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--model", model, "--max-new-tokens", "24"],
        cwd=ROOT,
        env=env,
        stdout=log_path.open("w"),
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
    proc.kill()
    raise SystemExit("app.py did not start within 180 s")


def main(argv=None) -> int:
    from gradio_client import Client, handle_file

    from app.launch import EMBEDDED_MODEL
    from scenes import generate_scene

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(EMBEDDED_MODEL))
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--budget", type=int, default=64, help="visual tokens kept per method")
    args = parser.parse_args(argv)
    if not 1 <= args.users <= 32:
        raise SystemExit("--users must be between 1 and 32")

    tmp = Path(tempfile.mkdtemp(prefix="prunelens-load-"))
    images = []
    for i in range(args.users):
        path = tmp / f"user{i}.png"
        generate_scene(500 + i, ("simple", "medium", "complex")[i % 3]).image.save(path)
        images.append(path)
    port = free_port()
    proc = start_app(args.model, port, tmp / "app.log")
    url = f"http://127.0.0.1:{port}"
    try:

        def ask(i: int) -> tuple[dict, float]:
            client = Client(url, verbose=False)
            start = time.perf_counter()
            out = client.predict(
                handle_file(str(images[i])),
                "Describe the image.",
                "attention,diversity,adaptive",
                args.budget,
                "",
                api_name="/compare",
            )
            return out, time.perf_counter() - start

        reference = [ask(i)[0] for i in range(args.users)]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.users) as pool:
            results = list(pool.map(ask, range(args.users)))
        wall = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    def answers(payload: dict) -> dict:
        return {"full": payload["full"]["text"], **{m: v["answer"]["text"] for m, v in payload["methods"].items()}}

    wrong = [i for i, (out, _) in enumerate(results) if answers(out) != answers(reference[i])]
    latencies = sorted(t for _, t in results)
    print(
        f"{args.users} simultaneous users on {args.model}: wall {wall:.1f} s, latency median "
        f"{statistics.median(latencies):.1f} s, worst {latencies[-1]:.1f} s"
    )
    print(f"answers equal to the single-user reference: {args.users - len(wrong)}/{args.users}")
    return 0 if not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
