"""The llamafs node: llama.cpp served as the /n/llama namespace.

    settings   every default and limit; the table of session settings
    model      the model interface the engine is given, and shared types
    llamacpp   the real model: llama.cpp through llama-cpp-python
    engine     the scheduler: sessions' turns batched into one model
    reply      one turn's reply, streaming to any number of readers
    errors     every error the node and the coordinator answer
    sessions   sessions and the table that numbers and caps them
    qids       the layout of qid paths
    namespace  the file tree (one file table), over a session backend and a root backend
    handles    what an open of each file gives
    backend    the node's backends: the engine in this process
    metrics    the node's metrics file
    node       a node: engine, namespace and 9P server together
    cli        its command (`python -m styxfs.llama`, `llamafs serve`)

Importing this package loads nothing; `node` and `llamacpp` load llama.cpp.
"""
