"""styxfs: a 9P2000 (Styx) toolkit on trio — a sans-I/O codec (wire), a
server, a file-tree API (tree), a client, dial strings, authentication and
a RAM file server.  It knows nothing of llama.cpp: the llamafs node built
on it is the subpackage `styxfs.llama`."""

__version__ = "0.2.0"
