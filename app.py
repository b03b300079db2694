"""PruneLens app entry point: `python app.py [--model ID_OR_PATH] [--dtype DTYPE] [--share]`.

The demo is built at import (HuggingFace Spaces and `gradio app.py` look for `demo`); the model is
loaded once per process, and running the file as a script launches that same demo. Host and port
follow GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; PRUNELENS_MODEL selects the model.

The model argument is checked before torch, transformers or gradio are imported (`app.launch` is
light until `start_demo` loads the model): a missing folder, an unsupported architecture or truncated
weights, like any failure to load the model, end the process within about a second with one line
`prunelens: error: ...` on stderr and exit status 2.
"""

import sys

from app.launch import launch, parse_args, start_demo

args = parse_args(sys.argv[1:])
demo = start_demo(args)

if __name__ == "__main__":
    launch(demo, args)
