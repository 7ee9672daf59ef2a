implement Isolate;

#
# isolate [-M modulepath] [-k secretfile] nodeaddr modelpath ctx layers exportaddr
#
# A Dis-VM isolate in front of one llamafs node: mounts the node at
# /n/llama in a namespace of its own, loads the model through
# Llamacpp's ModelContext.loadmodel, then serves the node's tree on
# exportaddr (no authentication, as styxlisten -A).  Each client
# connection gets a connection of its own to the node, so that per-
# connection files (reply) keep their meaning.  It prints one line,
# "isolate: serving ... on tcp!HOST!PORT", once it listens (the port
# the OS chose, given port 0); errors go to stderr and end it
# with a fail: status.  With -k, every connection to the node
# authenticates with the secret in secretfile (a node started with
# --auth-secret-file; Llamacpp's authmount); the export itself stays
# unauthenticated: it is meant for loopback, where only this machine's
# users (the coordinator) can reach it.
#

include "sys.m";
	sys: Sys;
include "draw.m";
include "arg.m";
include "llamacpp.m";
	llamacpp: Llamacpp;
	ModelContext: import llamacpp;

Isolate: module
{
	init: fn(nil: ref Draw->Context, argv: list of string);
};

Memfs: module
{
	PATH: con "/dis/memfs.dis";
	init: fn(nil: ref Draw->Context, nil: list of string);
};

Cs: module
{
	PATH: con "/dis/ndb/cs.dis";
	init: fn(nil: ref Draw->Context, nil: list of string);
};

MNT: con "/n/llama";	# where Llamacpp's ModelContext finds the tree

stderr: ref Sys->FD;
secret: array of byte;	# for the node (-k), or nil

init(nil: ref Draw->Context, argv: list of string)
{
	sys = load Sys Sys->PATH;
	stderr = sys->fildes(2);
	arg := load Arg Arg->PATH;
	if(arg == nil)
		fail(sys->sprint("can't load %s: %r", Arg->PATH));
	arg->init(argv);
	arg->setusage("isolate [-M modulepath] [-k secretfile] nodeaddr modelpath ctx layers exportaddr");
	modpath := Llamacpp->PATH;
	secretfile := "";
	while((c := arg->opt()) != 0)
		case c {
		'M' =>
			modpath = arg->earg();
		'k' =>
			secretfile = arg->earg();
		* =>
			arg->usage();
		}
	argv = arg->argv();
	if(len argv != 5)
		arg->usage();
	arg = nil;
	nodeaddr := hd argv;
	modelpath := hd tl argv;
	ctxsize := int hd tl tl argv;
	layers := int hd tl tl tl argv;
	exportaddr := hd tl tl tl tl argv;

	llamacpp = load Llamacpp modpath;
	if(llamacpp == nil)
		fail(sys->sprint("can't load %s: %r", modpath));
	llamacpp->init();
	if(secretfile != nil){
		secret = llamacpp->readsecret(secretfile);
		if(secret == nil)
			fail(sys->sprint("%r"));
	}

	sys->pctl(Sys->FORKNS, nil);
	if(!numeric(nodeaddr) && sys->stat("/net/cs").t0 < 0)
		startcs();
	if(sys->stat(MNT).t0 < 0)
		makemntpt(MNT);
	(nil, err) := mountnode(nodeaddr);
	if(err != nil)
		fail(err);

	mc := ModelContext.loadmodel(modelpath, ctxsize, layers);
	if(mc == nil)
		fail(sys->sprint("can't load model %s on %s: %r", modelpath, nodeaddr));

	(ok, ann) := sys->announce(exportaddr);
	if(ok < 0)
		fail(sys->sprint("can't announce %s: %r", exportaddr));
	# The address as announced: the port the OS chose, for port 0.
	sys->print("isolate: serving %s (model %s) on %s\n", nodeaddr, modelpath, announced(ann.dir, exportaddr));
	for(;;){
		(lok, conn) := sys->listen(ann);
		if(lok < 0)
			fail(sys->sprint("listen on %s: %r", exportaddr));
		dfd := sys->open(conn.dir + "/data", Sys->ORDWR);
		if(dfd == nil){
			sys->fprint(stderr, "isolate: can't open %s/data: %r\n", conn.dir);
			continue;
		}
		sync := chan of int;
		spawn serve(dfd, nodeaddr, sync);
		<-sync;
		dfd = nil;
		conn.cfd = nil;
	}
}

# One client: a connection of its own to the node, mounted on MNT in a
# namespace of its own, exported to the client until it goes.
serve(dfd: ref Sys->FD, nodeaddr: string, sync: chan of int)
{
	sys->pctl(Sys->FORKNS|Sys->NEWFD, 2 :: dfd.fd :: nil);
	dfd = sys->fildes(dfd.fd);
	sync <-= 1;
	(ctl, err) := mountnode(nodeaddr);
	if(err != nil){
		sys->fprint(stderr, "isolate: %s\n", err);
		return;
	}
	sys->export(dfd, MNT, Sys->EXPWAIT);
	# No unmount: export's slaves may still be walking MNT (it does not
	# wait for them), and an unmount then crashes emu's walk(); the
	# namespace is ours and goes with the last of us.
	if(ctl != nil)
		sys->fprint(ctl, "hangup");
}

# Dial the node and mount it on MNT; the connection's ctl file (to hang up).
announced(dir: string, asked: string): string
{
	fd := sys->open(dir + "/local", Sys->OREAD);
	if(fd == nil)
		return asked;
	buf := array[128] of byte;
	n := sys->read(fd, buf, len buf);
	if(n <= 0)
		return asked;
	local := string buf[0:n];
	if(local[len local - 1] == '\n')
		local = local[0:len local - 1];
	return "tcp!" + local;
}

mountnode(addr: string): (ref Sys->FD, string)
{
	(ok, c) := sys->dial(addr, nil);
	if(ok < 0)
		return (nil, sys->sprint("can't dial node %s: %r", addr));
	if(llamacpp->authmount(c.dfd, secret, MNT, Sys->MREPL, nil) < 0){
		err := sys->sprint("can't mount node %s on %s: %r", addr, MNT);
		if(c.cfd != nil)
			sys->fprint(c.cfd, "hangup");
		return (nil, err);
	}
	return (c.cfd, nil);
}

# No MNT in this tree: a memfs before its parent, and MNT made in it.
makemntpt(mnt: string)
{
	(nil, parent) := splitpath(mnt);
	memfs := load Memfs Memfs->PATH;
	if(memfs == nil)
		fail(sys->sprint("no %s and can't load %s: %r", mnt, Memfs->PATH));
	{
		memfs->init(nil, "memfs" :: "-b" :: parent :: nil);
	} exception e {
	"fail:*" =>
		fail(sys->sprint("no %s and memfs failed: %s", mnt, e[5:]));
	}
	if(sys->create(mnt, Sys->OREAD, Sys->DMDIR|8r555) == nil)
		fail(sys->sprint("can't make %s: %r", mnt));
}

# A dial string whose host needs no translation by ndb/cs.
numeric(dest: string): int
{
	(n, f) := sys->tokenize(dest, "!");
	if(n < 2)
		return 1;
	host := hd tl f;
	for(i := 0; i < len host; i++){
		ch := host[i];
		if(!(ch >= '0' && ch <= '9' || ch == '.' || ch == ':' || ch == '*'))
			return 0;
	}
	return 1;
}

# Names need ndb/cs: start it (in our namespace) when it isn't running.
startcs()
{
	cs := load Cs Cs->PATH;
	if(cs == nil)
		fail(sys->sprint("can't load %s: %r", Cs->PATH));
	done := chan of string;
	spawn runcs(cs, done);
	err := <-done;
	if(err != nil)
		fail("ndb/cs: " + err);
}

runcs(cs: Cs, done: chan of string)
{
	{
		cs->init(nil, "cs" :: nil);
	} exception e {
	"*" =>
		done <-= e;
		return;
	}
	done <-= nil;
}

splitpath(p: string): (string, string)
{
	for(i := len p - 1; i > 0; i--)
		if(p[i] == '/')
			return (p[i+1:], p[0:i]);
	return (p, "/");
}

fail(msg: string)
{
	sys->fprint(stderr, "isolate: %s\n", msg);
	raise "fail:" + msg;
}
