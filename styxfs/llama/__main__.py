"""`python -m styxfs.llama`: serve one node (the same command as `llamafs serve`)."""

from .cli import serve

serve(prog_name="python -m styxfs.llama")
