"""Starting the app: which model, which examples, which vocabulary, and the Gradio server settings.

``create_demo`` is cached per model, device and dtype, so the model is loaded once per process
however often it is asked for (``app.py`` builds the demo at import for HuggingFace Spaces and then
launches it when run as a script). ``start_demo`` puts the start-up checks in front of it: the
model argument is checked by ``app.preflight`` before torch, transformers or gradio are imported
(this module imports them only inside functions), and a model that fails the checks or fails to
load ends the process with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .preflight import DTYPES, PreflightError, check_model, fail

if TYPE_CHECKING:
    from .compare import Example

__all__ = [
    "EMBEDDED_MODEL",
    "create_demo",
    "gallery",
    "launch",
    "main",
    "parse_args",
    "photo_examples",
    "scene_examples",
    "start_demo",
]

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_MODEL = ROOT / "assets" / "models" / "prunelens-tiny-llava"
MAX_UPLOAD = "20mb"
SCENE_EXAMPLES = (("text", 3), ("simple", 11), ("medium", 5), ("complex", 7), ("complex", 19))
# Real photos that ship inside the gradio package we depend on (gradio.media; Apache-2.0 package).
PHOTO_EXAMPLES = ("cheetah.jpg", "lion.jpg", "cheetah1.jpg", "tower.jpg")  # offered with real checkpoints only
EMBEDDED_UPLOAD_NOTE = (
    "the embedded model was trained only on PruneLens's built-in scenes. On this image its overlays and "
    "metrics are real, but its answers mean nothing: load a real checkpoint (`python app.py --model ...`) "
    "to ask about photos."
)


def scene_examples() -> list[Example]:
    """Built-in scenes from simple to complex, each with its exact ground truth."""
    from scenes import generate_scene

    from .compare import Example

    out = []
    for complexity, seed in SCENE_EXAMPLES:
        scene = generate_scene(seed, complexity)
        shapes = tuple(sorted({o.shape for o in scene.objects}))
        prompt = "What word is written in the image?" if scene.text and not scene.objects else "Describe the image."
        theme = f", {scene.theme} theme" if scene.theme else ""
        note = f"built-in scene, {complexity}, seed {seed}{theme}: {len(scene.objects)} object(s)"
        objects = tuple((o.shape, o.color) for o in scene.objects)
        out.append(
            Example(f"{complexity} #{seed}", scene.image, truth=shapes, note=note, prompt=prompt, objects=objects)
        )
    return out


def photo_examples() -> list[Example]:
    """A few real photos shipped with gradio (no ground truth: type it, or compare with the full model)."""
    from gradio.media import get_image
    from PIL import Image

    from .compare import Example

    out = []
    for name in PHOTO_EXAMPLES:
        try:
            image = Image.open(get_image(name)).convert("RGB")
        except (OSError, ValueError):
            continue  # a gradio release without this asset: the gallery just has one photo fewer
        note = f"photo {name} shipped with gradio {__import__('gradio').__version__} (Apache-2.0 package)"
        out.append(Example(f"photo {name}", image, truth=None, note=note, prompt="Describe this image in detail."))
    return out


def gallery(embedded: bool) -> list[Example]:
    """The page's examples: built-in scenes, and real photos only for a model that knows photos."""
    return scene_examples() if embedded else scene_examples() + photo_examples()


def _is_embedded(model: str) -> bool:
    path = Path(model)
    return path.exists() and path.resolve() == EMBEDDED_MODEL.resolve()


@functools.lru_cache(maxsize=2)
def create_demo(
    model: str = str(EMBEDDED_MODEL),
    device: str = "auto",
    max_new_tokens: int = 48,
    dtype: str = "auto",
    text_tower: str | None = None,
):
    """Load ``model`` once (on ``device``, in ``dtype``, with CLIP's ``text_tower`` for CDPruner when
    given: see ``runtime.load_runner``) and build the page for it."""
    from scenes.tasks import SCENE_VOCABULARY, attribute_errors
    from scoring import COCO_VOCABULARY

    from .compare import ComparePipeline
    from .runtime import load_runner
    from .ui import build_demo

    if _is_embedded(model) and not EMBEDDED_MODEL.joinpath("config.json").exists():
        raise SystemExit(
            f"The embedded model is missing from {EMBEDDED_MODEL}. Reproduce it with `python -m scenes.train` "
            "or pass --model with a LLaVA checkpoint."
        )
    runner = load_runner(model, device=device, dtype=dtype, text_tower=text_tower or None)
    embedded = _is_embedded(model)
    pipeline = ComparePipeline(
        runner,
        vocabulary=SCENE_VOCABULARY if embedded else COCO_VOCABULARY,
        examples=gallery(embedded),
        max_new_tokens=max_new_tokens,
        upload_note=EMBEDDED_UPLOAD_NOTE if embedded else None,
        attribute_errors=attribute_errors if embedded else None,
    )
    return build_demo(pipeline)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The launch options; unknown arguments (e.g. a hosting tool's own) are ignored."""
    parser = argparse.ArgumentParser(description="PruneLens: compare visual-token pruning methods in the browser.")
    parser.add_argument(
        "--model",
        default=os.environ.get("PRUNELENS_MODEL", str(EMBEDDED_MODEL)),
        help="HuggingFace id or local folder of a LLaVA checkpoint (default: the embedded model)",
    )
    parser.add_argument(
        "--text-tower",
        default=os.environ.get("PRUNELENS_TEXT_TOWER"),
        help="HuggingFace id or folder of the CLIP checkpoint the model's vision tower came from, for CDPruner "
        "(LLaVA-1.5, LLaVA-NeXT: openai/clip-vit-large-patch14-336)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPES,
        help="weights dtype (default: auto = bfloat16 on CUDA, float16 where bf16 is unsupported, float32 on CPU)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    parser.add_argument("--concurrency", type=int, default=1, help="model requests run at once")
    return parser.parse_known_args(argv)[0]


def launch(demo, args: argparse.Namespace) -> None:
    """Serve ``demo``: a bounded queue, model work one request at a time, uploads and bodies size-limited.

    Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (gradio reads them itself).
    """
    import signal

    from starlette.middleware import Middleware

    from .bodylimit import BodyLimit

    # A SIGTERM (a host stopping the app) ends the process like Ctrl-C, so exit handlers run and the
    # sessions' export folders are deleted instead of left in the temp folder.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))

    demo.queue(default_concurrency_limit=args.concurrency, max_size=64).launch(
        share=args.share,
        max_file_size=MAX_UPLOAD,
        show_error=False,
        app_kwargs={"middleware": [Middleware(BodyLimit)]},
    )


def start_demo(args: argparse.Namespace):
    """``create_demo`` for the parsed options, after ``app.preflight.check_model``.

    A model that fails the checks or fails to load (not available, unsupported, unreadable or
    truncated weights) ends the process: one line ``prunelens: error: ...`` on stderr, exit status 2.
    """
    try:
        check_model(args.model)
    except PreflightError as err:
        if _is_embedded(args.model):
            fail(f"{err}. The embedded model is incomplete: reproduce it with `python -m scenes.train`.")
        fail(err)
    from safetensors import SafetensorError

    try:
        return create_demo(args.model, args.device, args.max_new_tokens, dtype=args.dtype, text_tower=args.text_tower)
    except (ValueError, OSError) as err:  # ModelNotAvailableError is an OSError; these name the model
        fail(err)
    except (RuntimeError, SafetensorError) as err:  # e.g. a state dict that does not fit the config
        fail(f"loading model {args.model!r} failed ({type(err).__name__}: {err})")


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, start the demo and serve it (what ``python app.py`` does)."""
    args = parse_args(argv)
    launch(start_demo(args), args)
