"""PruneLens app entry point: `python app.py [--model ID_OR_PATH] [--share]`.

The demo is built at import (HuggingFace Spaces and `gradio app.py` look for `demo`); the model is
loaded once per process, and running the file as a script launches that same demo. Host and port
follow GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; PRUNELENS_MODEL selects the model.
"""

import sys

from app.launch import create_demo, launch, parse_args

args = parse_args(sys.argv[1:])
demo = create_demo(args.model, args.device, args.max_new_tokens)

if __name__ == "__main__":
    launch(demo, args)
