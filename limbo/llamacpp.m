# llamafs from Limbo: the /n/llama file tree (a llamafs node or
# coordinator, mounted with mount -A) wrapped in the original design's ADTs.
#
# A node (or coordinator) started with --auth-secret-file is reached with
# its shared secret: DisNode's secret, or authmount (llamafs-secret-1 over
# 9P's Tauth, as in styxfs/auth.py; the secret never crosses the wire).
#
# Every function reports failure Limbo's way: a nil (or -1) result with the
# reason in the process's error string (%r); no exception leaves the module.
# There is no module-level state besides the loaded Sys: several
# NetworkCoordinators (and DisNodes) can live in one program.

Llamacpp: module
{
	PATH: con "/dis/deployment/llamacpp.dis";

	init: fn();

	# The model of the tree mounted at /n/llama: loadmodel writes
	# "load PATH ctx N gpulayers N" to /n/llama/ctl (PATH is resolved in the
	# node's models directory); evaluate sends input as one turn of a session
	# of its own (clone, N/data) and returns the whole reply, and sets reason
	# to why it ended, from N/status: stop, length (maxtokens), context (the
	# context is full), cancelled or error; unload writes "unload".
	ModelContext: adt {
		mnt:	string;
		path:	string;
		ctxsize:	int;
		layers:	int;
		reason:	string;	# why the last reply ended; nil before any

		loadmodel: fn(path: string, ctxSize: int, layers: int): ref ModelContext;
		unload: fn(ctx: self ref ModelContext);
		evaluate: fn(ctx: self ref ModelContext, input: string): string;
	};

	# One node (or coordinator) at tcp!addr!port.  connect dials it and
	# mounts it in a namespace private to the node (a process of its own
	# that serves the node's requests); sendRequest sends a prompt through
	# its data file and returns the whole reply; disconnect unmounts and
	# hangs up.  A node whose transport fails is marked failed (and
	# disconnected) until it is connected again.  Set secret (readsecret)
	# before connect to authenticate; nil: no authentication.  Set model to
	# name one of a deployment's models (its requests go through
	# models/NAME/new/data); nil: the default model.
	DisNode: adt {
		id:	string;
		addr:	string;
		port:	int;
		secret:	array of byte;	# the shared secret, or nil
		connected:	int;
		failed:	int;
		err:	string;	# why it failed
		model:	string;	# the model its requests name, or nil: the default
		reqc:	chan of (string, string, chan of (string, string, int));
		quitc:	chan of chan of int;
		lock:	chan of int;	# buffered, one slot

		init: fn(id: string, addr: string, p: int): ref DisNode;
		connect: fn(node: self ref DisNode): int;
		disconnect: fn(node: self ref DisNode);
		sendRequest: fn(node: self ref DisNode, req: string): string;
	};

	# The secret in file: its bytes, trailing CR/LF stripped; nil and %r
	# when it cannot be read or is empty.
	readsecret: fn(file: string): array of byte;

	# sys->mount(fd, nil, old, flag, aname) when secret is nil; else
	# sys->fauth, the llamafs-secret-1 exchange over the afid (checking
	# that the server knows the secret too), and the mount with that afid.
	# As sys->mount: -1 and %r ("authentication failed: ..." when the
	# server refuses the secret or its proof is wrong).
	authmount: fn(fd: ref Sys->FD, secret: array of byte, old: string, flag: int, aname: string): int;

	# Round-robin over the connected nodes that have not failed; dispatch
	# fails over to the next node until one answers.
	NetworkCoordinator: adt {
		nodes:	array of ref DisNode;
		next:	int;
		lock:	chan of int;

		init: fn(): ref NetworkCoordinator;
		addNode: fn(nc: self ref NetworkCoordinator, node: ref DisNode);
		removeNode: fn(nc: self ref NetworkCoordinator, nodeId: string);
		dispatch: fn(nc: self ref NetworkCoordinator, request: string): string;
		balance: fn(nc: self ref NetworkCoordinator): ref DisNode;
	};
};
