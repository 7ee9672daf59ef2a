# llamafs from Limbo: the /n/llama file tree (a llamafs node or
# coordinator, mounted with mount -A) wrapped in the original design's ADTs.
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
	# node's models directory); evaluate sends input through /n/llama/data and
	# returns the whole reply; unload writes "unload".
	ModelContext: adt {
		mnt:	string;
		path:	string;
		ctxsize:	int;
		layers:	int;

		loadmodel: fn(path: string, ctxSize: int, layers: int): ref ModelContext;
		unload: fn(ctx: self ref ModelContext);
		evaluate: fn(ctx: self ref ModelContext, input: string): string;
	};

	# One node (or coordinator) at tcp!addr!port.  connect dials it and
	# mounts it in a namespace private to the node (a process of its own
	# that serves the node's requests); sendRequest sends a prompt through
	# its data file and returns the whole reply; disconnect unmounts and
	# hangs up.  A node whose transport fails is marked failed (and
	# disconnected) until it is connected again.
	DisNode: adt {
		id:	string;
		addr:	string;
		port:	int;
		connected:	int;
		failed:	int;
		err:	string;	# why it failed
		reqc:	chan of (string, chan of (string, string, int));
		quitc:	chan of chan of int;
		lock:	chan of int;	# buffered, one slot

		init: fn(id: string, addr: string, p: int): ref DisNode;
		connect: fn(node: self ref DisNode): int;
		disconnect: fn(node: self ref DisNode);
		sendRequest: fn(node: self ref DisNode, req: string): string;
	};

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
