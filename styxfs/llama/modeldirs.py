"""models/: the models a tree serves, as /net serves its protocols.

    models/NAME/{clone, new/{ctl,data,reply,status}, status}

On a node one model, on a coordinator each of its deployment's.  clone and
new/ are the root's, their sessions of that model; the root's own are the
default model's (the first).  status is one line: `up` or `down`, then
nodes=UP/TOTAL context=N mode=chat|raw sessions=N.  What the models are and
what status says comes from the root backend (model_names, model_status).

Qid paths: models/ is a root file's; model I (1, 2, … in the order first
seen) is `(I << 8) | file`, its files in qids.MODEL_FILES and up, which no
session file uses."""

from __future__ import annotations

from styxfs.tree import Caller, Entry, Handle
from styxfs.wire import DMDIR

from . import errors
from .handles import Snapshot
from .qids import MODEL_FILES, qpath

MODELS_DIR = 0x0E  # models/ itself: a file of the root's (session 0)
MODEL_DIR, CLONE, NEW, STATUS = (MODEL_FILES + i for i in range(4))
NEW_FIRST = MODEL_FILES + 8  # new/NAME: NEW_FIRST + its index among the new files


def check_model(tree, name: str) -> None:
    """An unknown model is an error naming the ones there are."""
    names = tree.root_backend.model_names()
    if name not in names:
        raise errors.NO_SUCH_MODEL(model=name, models=", ".join(names) or "none")


async def choose_model(tree, session, name: str) -> None:
    """ctl `model NAME`: the session's model, before its first turn."""
    check_model(tree, name)
    if session.reply is not None:
        raise errors.MODEL_CHOSEN()
    await tree.session_backend.choose_model(session, name)


class ModelsDir(Entry):
    def __init__(self, tree, new_files):
        super().__init__("models", qpath(0, MODELS_DIR), DMDIR | 0o555, "llamafs")
        self.tree, self.new_files = tree, new_files  # new/'s rows of the file table (namespace.NEW_FILES)

    def _index(self, name: str) -> int:
        """A model's number for its qid paths: stable while the tree lives."""
        numbers = self.tree.model_numbers
        return numbers.setdefault(name, len(numbers) + 1)

    async def children(self, caller: Caller) -> list[Entry]:
        return [self._dir(name) for name in self.tree.root_backend.model_names()]

    async def walk(self, name: str, caller: Caller) -> Entry:
        check_model(self.tree, name)
        return self._dir(name)

    def _dir(self, name: str) -> "ModelDir":
        return ModelDir(self.tree, name, self._index(name), self.new_files)


class ModelDir(Entry):
    def __init__(self, tree, model: str, index: int, new_rows):
        super().__init__(model, qpath(index, MODEL_DIR), DMDIR | 0o555, "llamafs")
        self.tree, self.model, self.index, self.new_rows = tree, model, index, new_rows

    async def children(self, caller: Caller) -> list[Entry]:
        new_files = [InModel(self, row.name, qpath(self.index, NEW_FIRST + i), row.perm)
                     for i, row in enumerate(self.new_rows)]
        new = ModelNewDir(self, new_files)
        return [InModel(self, "ctl", qpath(self.index, CLONE), 0o666, name="clone"), new,
                ModelStatusFile(self)]


class ModelNewDir(Entry):
    def __init__(self, model_dir: ModelDir, files: list[Entry]):
        super().__init__("new", qpath(model_dir.index, NEW), DMDIR | 0o555, "llamafs")
        self.files = files

    async def children(self, caller: Caller) -> list[Entry]:
        return self.files


class InModel(Entry):
    """clone and new/NAME of a model: an open makes a session of that model
    and opens its file `file` (clone: its ctl)."""

    def __init__(self, model_dir: ModelDir, file: str, qid_path: int, perm: int, name: str | None = None):
        super().__init__(name or file, qid_path, perm, "llamafs")
        self.tree, self.model, self.file = model_dir.tree, model_dir.model, file

    async def open(self, mode: int, caller: Caller) -> Handle:
        check_model(self.tree, self.model)  # it may have gone since the walk
        session = await self.tree.new_session(caller)
        await self.tree.session_backend.choose_model(session, self.model)
        return await self.tree.session_file(session, self.file).open_for(caller)


class ModelStatusFile(Entry):
    def __init__(self, model_dir: ModelDir):
        super().__init__("status", qpath(model_dir.index, STATUS), 0o444, "llamafs")
        self.tree, self.model = model_dir.tree, model_dir.model

    async def open(self, mode: int, caller: Caller) -> Handle:
        return ModelStatus(self)


class ModelStatus(Snapshot):
    async def text(self) -> str:
        entry = self.entry
        return await entry.tree.root_backend.model_status(entry.tree, entry.model)


def status_line(up: int, total: int, context: int | str, chat: bool | None, sessions: int) -> str:
    mode = "unknown" if chat is None else "chat" if chat else "raw"
    return f"{'up' if up else 'down'} nodes={up}/{total} context={context} mode={mode} sessions={sessions}\n"
