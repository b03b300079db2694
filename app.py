"""PruneLens app entry point: `python app.py [--model ID_OR_PATH] [--share]`.

Host and port follow GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; PRUNELENS_MODEL selects the model.
"""

from app.launch import main

if __name__ == "__main__":
    main()
