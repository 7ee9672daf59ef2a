"""styxfs: a 9P2000 (Styx) server, client and file-tree toolkit on trio,
and the llamafs node served with it."""

__version__ = "0.1.0"
