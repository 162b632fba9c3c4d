from compress.cli import entrypoint

entrypoint()
