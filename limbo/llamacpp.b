implement Llamacpp;

#
# The llamafs tree (README: the namespace) behind the original design's
# ADTs.  Errors are returned Limbo's way (nil or -1, reason in %r); every
# entry point catches exceptions so none escapes into the caller.
#

include "sys.m";
	sys: Sys;
include "draw.m";
include "keyring.m";
include "llamacpp.m";

# ndb/cs, started in a DisNode's private namespace when it must dial a
# name and there is no /net/cs.
Cs: module
{
	PATH: con "/dis/ndb/cs.dis";
	init: fn(nil: ref Draw->Context, nil: list of string);
};

MNT: con "/n/llama";	# where ModelContext finds the tree
NODEMNT: con "/n";	# where a DisNode mounts its node, in its own namespace

init()
{
	sys = load Sys Sys->PATH;
}

# Sys, for callers that forgot init (the only module-level state).
S()
{
	if(sys == nil)
		sys = load Sys Sys->PATH;
}

#
# ModelContext
#

ModelContext.loadmodel(path: string, ctxSize: int, layers: int): ref ModelContext
{
	S();
	{
		if(path == nil){
			sys->werrstr("no model path");
			return nil;
		}
		cmd := "load " + quote(path);
		if(ctxSize > 0)
			cmd += " ctx " + string ctxSize;
		if(layers >= 0)
			cmd += " gpulayers " + string layers;
		err := writectl(MNT, cmd);
		if(err != nil){
			sys->werrstr(err);
			return nil;
		}
		return ref ModelContext(MNT, path, ctxSize, layers, nil);
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
	return nil;
}

ModelContext.unload(ctx: self ref ModelContext)
{
	S();
	{
		err := writectl(ctx.mnt, "unload");
		sys->werrstr(err);	# "" when it worked: unload returns nothing else
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
}

ModelContext.evaluate(ctx: self ref ModelContext, input: string): string
{
	S();
	{
		(reply, reason, err) := converse(ctx.mnt, input);
		ctx.reason = reason;
		if(err != nil){
			sys->werrstr(err);
			return nil;
		}
		return reply;
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
	return nil;
}

#
# DisNode
#

DisNode.init(id: string, addr: string, p: int): ref DisNode
{
	return ref DisNode(id, addr, p, nil, 0, 0, nil, nil, nil, nil, chan[1] of int);
}

dialstring(node: ref DisNode): string
{
	for(i := 0; i < len node.addr; i++)
		if(node.addr[i] == '!')
			return node.addr;	# already a dial string
	return "tcp!" + node.addr + "!" + string node.port;
}

# connect, disconnect and the hand-over of a request to the node's process
# hold node.lock, so that none of them meets a process that has gone.
DisNode.connect(node: self ref DisNode): int
{
	S();
	{
		node.lock <-= 1;
		err := connect(node);
		<-node.lock;
		if(err != nil){
			sys->werrstr(err);
			return -1;
		}
		return 0;
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
	return -1;
}

connect(node: ref DisNode): string
{
	if(node.connected)
		return nil;
	dest := dialstring(node);
	reqc := chan of (string, string, chan of (string, string, int));
	quitc := chan of chan of int;
	sync := chan of string;
	spawn nodeproc(dest, node.secret, reqc, quitc, sync);
	err := <-sync;
	if(err != nil){
		node.failed = 1;
		node.err = err;
		return err;
	}
	node.reqc = reqc;
	node.quitc = quitc;
	node.connected = 1;
	node.failed = 0;
	node.err = nil;
	return nil;
}

DisNode.disconnect(node: self ref DisNode)
{
	S();
	{
		node.lock <-= 1;
		disconnect(node);
		<-node.lock;
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
}

disconnect(node: ref DisNode)
{
	if(!node.connected)
		return;
	done := chan of int;
	node.quitc <-= done;
	<-done;
	node.connected = 0;
	node.reqc = nil;
	node.quitc = nil;
}

DisNode.sendRequest(node: self ref DisNode, req: string): string
{
	S();
	{
		(reply, err) := noderequest(node, req);
		if(err != nil){
			sys->werrstr(err);
			return nil;
		}
		return reply;
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
	return nil;
}

# (reply, nil) or (nil, error): an empty reply is not an error.
noderequest(node: ref DisNode, req: string): (string, string)
{
	if(node == nil)
		return (nil, "nil node");
	rc := chan[1] of (string, string, int);
	node.lock <-= 1;
	connected := node.connected;
	if(connected)
		node.reqc <-= (modeldir(node.model), req, rc);
	<-node.lock;
	if(!connected)
		return (nil, "node " + node.id + " not connected");
	(reply, err, dead) := <-rc;
	if(err == nil)
		return (reply, nil);
	err = "node " + node.id + ": " + err;
	if(dead){
		node.lock <-= 1;
		node.failed = 1;
		node.err = err;
		disconnect(node);
		<-node.lock;
	}
	return (nil, err);
}

# The node's own process: a private namespace with the node mounted on
# NODEMNT; each request is served by a process of its own, in the same
# namespace.
# Where a request of the model is sent, below the node's mount: its root
# data (the default model's), or a new session of the model.
modeldir(model: string): string
{
	if(model == nil)
		return nil;
	return "/models/" + model + "/new";
}

nodeproc(dest: string, secret: array of byte, reqc: chan of (string, string, chan of (string, string, int)),
	quitc: chan of chan of int, sync: chan of string)
{
	c: Sys->Connection;
	{
		sys->pctl(Sys->NEWFD|Sys->FORKNS, nil);
		if(!numeric(dest) && sys->stat("/net/cs").t0 < 0){
			err := startcs();
			if(err != nil){
				sync <-= sys->sprint("can't dial %s: no /net/cs and ndb/cs failed: %s", dest, err);
				return;
			}
		}
		ok: int;
		(ok, c) = sys->dial(dest, nil);
		if(ok < 0){
			sync <-= sys->sprint("can't dial %s: %r", dest);
			return;
		}
		if(authmount(c.dfd, secret, NODEMNT, Sys->MREPL, nil) < 0){
			sync <-= sys->sprint("can't mount %s: %r", dest);
			hangup(c);
			return;
		}
		c.dfd = nil;
	} exception e {
	"*" =>
		sync <-= "llamacpp: " + e;
		return;
	}
	sync <-= nil;
	for(;;) alt {
	(dir, req, rc) := <-reqc =>
		spawn worker(dir, req, rc);
	done := <-quitc =>
		# Hang up, but leave the mount: the namespace is this process's
		# and its workers', and goes with the last of them.  Unmounting
		# while a worker walks the mount crashes emu (port/chan.c walk()
		# reads the union list unmount has freed), and the crash's handler
		# takes the VM twice: the whole emu hangs.
		hangup(c);
		done <-= 0;
		return;
	}
}

worker(dir: string, req: string, rc: chan of (string, string, int))
{
	{
		(reply, err) := talk(NODEMNT + dir, req);
		if(err == nil){
			rc <-= (reply, nil, 0);
			return;
		}
		# An error from a live node is the request's; if the node no
		# longer answers, the node has failed.
		dead := sys->stat(NODEMNT + "/ctl").t0 < 0;
		rc <-= (nil, err, dead);
	} exception e {
	"*" =>
		rc <-= (nil, "llamacpp: " + e, 0);
	}
}

hangup(c: Sys->Connection)
{
	if(c.cfd != nil)
		sys->fprint(c.cfd, "hangup");
}

# A dial string whose host needs no translation by cs.
numeric(dest: string): int
{
	(n, f) := sys->tokenize(dest, "!");
	if(n < 2)
		return 1;	# a bare name: let dial complain
	host := hd tl f;
	if(host == "*")
		return 1;
	for(i := 0; i < len host; i++){
		ch := host[i];
		if(!(ch >= '0' && ch <= '9' || ch == '.' || ch == ':'))
			return 0;
	}
	return 1;
}

startcs(): string
{
	done := chan of string;
	spawn runcs(done);
	err := <-done;
	if(err == nil && sys->stat("/net/cs").t0 < 0)
		err = "/net/cs did not appear";
	return err;
}

runcs(done: chan of string)
{
	{
		cs := load Cs Cs->PATH;
		if(cs == nil){
			done <-= sys->sprint("can't load %s: %r", Cs->PATH);
			return;
		}
		cs->init(nil, "cs" :: nil);
	} exception e {
	"*" =>
		done <-= e;
		return;
	}
	done <-= nil;
}

#
# Shared-secret authentication (llamafs-secret-1; styxfs/auth.py):
#	read	"challenge SNONCE\n"
#	write	"response CNONCE MAC(client)\n"
#	read	"proof MAC(server)\n"
# over the afid, MAC(role) = hex HMAC-SHA256(secret, "role SNONCE CNONCE
# uname aname").  Keyring is loaded where it is needed (no module state).
#

readsecret(file: string): array of byte
{
	S();
	{
		fd := sys->open(file, Sys->OREAD);
		if(fd == nil){
			sys->werrstr(sys->sprint("can't open secret file %s: %r", file));
			return nil;
		}
		(b, ok) := readall(fd);
		if(ok < 0){
			sys->werrstr(sys->sprint("can't read secret file %s: %r", file));
			return nil;
		}
		n := len b;
		while(n > 0 && (b[n-1] == byte '\n' || b[n-1] == byte '\r'))
			n--;
		if(n == 0){
			sys->werrstr(sys->sprint("%s: the secret file is empty", file));
			return nil;
		}
		return b[0:n];
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
	return nil;
}

authmount(fd: ref Sys->FD, secret: array of byte, old: string, flag: int, aname: string): int
{
	S();
	{
		if(secret == nil)
			return sys->mount(fd, nil, old, flag, aname);
		(afd, err) := authenticate(fd, secret, aname);
		if(err != nil){
			sys->werrstr(err);
			return -1;
		}
		return sys->mount(fd, afd, old, flag, aname);
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
	return -1;
}

AUTHFAILED: con "authentication failed";

# The afid, authenticated, or (nil, error).
authenticate(fd: ref Sys->FD, secret: array of byte, aname: string): (ref Sys->FD, string)
{
	kr := load Keyring Keyring->PATH;
	if(kr == nil)
		return (nil, sys->sprint("can't load %s: %r", Keyring->PATH));
	uname := user();
	if(uname == nil)
		return (nil, sys->sprint("can't read /dev/user: %r"));
	cnonce := nonce(kr);
	if(cnonce == nil)
		return (nil, sys->sprint("no random nonce: %r"));

	afd := sys->fauth(fd, aname);
	if(afd == nil)
		return (nil, sys->sprint(AUTHFAILED + ": the server said %r"));
	buf := array[256] of byte;
	n := sys->read(afd, buf, len buf);
	if(n < 0)
		return (nil, sys->sprint(AUTHFAILED + ": the server said %r"));
	(nf, f) := sys->tokenize(string buf[0:n], " \t\r\n");
	if(nf != 2 || hd f != "challenge")
		return (nil, AUTHFAILED + ": not a llamafs secret challenge");
	snonce := hd tl f;

	b := array of byte ("response " + cnonce + " " + mac(kr, secret, "client", snonce, cnonce, uname, aname) + "\n");
	if(sys->write(afd, b, len b) != len b){
		err := sys->sprint("%r");
		if(len err < len AUTHFAILED || err[0:len AUTHFAILED] != AUTHFAILED)
			err = AUTHFAILED + ": the server said " + err;
		return (nil, err);
	}
	n = sys->read(afd, buf, len buf);
	if(n < 0)
		return (nil, sys->sprint(AUTHFAILED + ": the server said %r"));
	(nf, f) = sys->tokenize(string buf[0:n], " \t\r\n");
	want := mac(kr, secret, "server", snonce, cnonce, uname, aname);
	if(nf != 2 || hd f != "proof" || !same(hd tl f, want))
		return (nil, AUTHFAILED + ": the server does not know the secret");
	return (afd, nil);
}

# hex HMAC-SHA256(secret, "role snonce cnonce uname aname")
mac(kr: Keyring, secret: array of byte, role, snonce, cnonce, uname, aname: string): string
{
	msg := array of byte (role + " " + snonce + " " + cnonce + " " + uname + " " + aname);
	return hex(hmacsha256(kr, secret, msg));
}

# RFC 2104 over Keyring's sha256 (Keyring has no hmac_sha256).
hmacsha256(kr: Keyring, key, msg: array of byte): array of byte
{
	BLOCK: con 64;
	if(len key > BLOCK){
		d := array[Keyring->SHA256dlen] of byte;
		kr->sha256(key, len key, d, nil);
		key = d;
	}
	ipad := array[BLOCK] of {* => byte 16r36};
	opad := array[BLOCK] of {* => byte 16r5c};
	for(i := 0; i < len key; i++){
		ipad[i] ^= key[i];
		opad[i] ^= key[i];
	}
	inner := array[Keyring->SHA256dlen] of byte;
	kr->sha256(msg, len msg, inner, kr->sha256(ipad, BLOCK, nil, nil));
	digest := array[Keyring->SHA256dlen] of byte;
	kr->sha256(inner, len inner, digest, kr->sha256(opad, BLOCK, nil, nil));
	return digest;
}

hex(b: array of byte): string
{
	s := "";
	for(i := 0; i < len b; i++)
		s += sys->sprint("%.2ux", int b[i]);
	return s;
}

# Equal strings, in time that does not depend on where they differ.
same(a, b: string): int
{
	if(len a != len b)
		return 0;
	d := 0;
	for(i := 0; i < len a; i++)
		d |= a[i] ^ b[i];
	return d == 0;
}

# 16 random bytes, in hex: from /dev/random, else Keyring's generator.
nonce(kr: Keyring): string
{
	b := array[16] of byte;
	fd := sys->open("/dev/random", Sys->OREAD);
	for(n := 0; fd != nil && n < len b; ){
		m := sys->read(fd, b[n:], len b - n);
		if(m <= 0)
			fd = nil;
		else
			n += m;
	}
	if(fd == nil){
		IPint: import kr;
		b = IPint.random(128, 128).iptobebytes();
	}
	return hex(b);
}

user(): string
{
	fd := sys->open("/dev/user", Sys->OREAD);
	if(fd == nil)
		return nil;
	(b, ok) := readall(fd);
	if(ok < 0)
		return nil;
	return string b;
}

# The whole file and 0, or -1 on error.
readall(fd: ref Sys->FD): (array of byte, int)
{
	buf := array[8192] of byte;
	all := array[0] of byte;
	nall := 0;
	for(;;){
		n := sys->read(fd, buf, len buf);
		if(n < 0)
			return (nil, -1);
		if(n == 0)
			return (all[0:nall], 0);
		if(nall + n > len all){
			a := array[2 * (nall + n)] of byte;
			a[0:] = all[0:nall];
			all = a;
		}
		all[nall:] = buf[0:n];
		nall += n;
	}
}

#
# NetworkCoordinator
#

NetworkCoordinator.init(): ref NetworkCoordinator
{
	return ref NetworkCoordinator(array[0] of ref DisNode, 0, chan[1] of int);
}

NetworkCoordinator.addNode(nc: self ref NetworkCoordinator, node: ref DisNode)
{
	S();
	{
		if(node == nil){
			sys->werrstr("nil node");
			return;
		}
		nc.lock <-= 1;
		for(i := 0; i < len nc.nodes; i++)
			if(nc.nodes[i].id == node.id)
				break;
		if(i < len nc.nodes)
			nc.nodes[i] = node;
		else{
			a := array[len nc.nodes + 1] of ref DisNode;
			a[0:] = nc.nodes;
			a[len nc.nodes] = node;
			nc.nodes = a;
		}
		<-nc.lock;
		sys->werrstr("");
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
}

NetworkCoordinator.removeNode(nc: self ref NetworkCoordinator, nodeId: string)
{
	S();
	{
		nc.lock <-= 1;
		a := array[len nc.nodes] of ref DisNode;
		n := 0;
		for(i := 0; i < len nc.nodes; i++){
			if(nc.nodes[i].id != nodeId)
				a[n++] = nc.nodes[i];
			else if(i < nc.next)
				nc.next--;
		}
		if(n == len nc.nodes)
			sys->werrstr("no node " + nodeId);
		else
			sys->werrstr("");
		nc.nodes = a[0:n];
		if(nc.next >= n)
			nc.next = 0;
		<-nc.lock;
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
}

NetworkCoordinator.balance(nc: self ref NetworkCoordinator): ref DisNode
{
	S();
	{
		nc.lock <-= 1;
		n := len nc.nodes;
		for(i := 0; i < n; i++){
			k := (nc.next + i) % n;
			node := nc.nodes[k];
			if(node.connected && !node.failed){
				nc.next = (k + 1) % n;
				<-nc.lock;
				return node;
			}
		}
		<-nc.lock;
		if(n == 0)
			sys->werrstr("no nodes");
		else
			sys->werrstr("no connected node has not failed");
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
	return nil;
}

NetworkCoordinator.dispatch(nc: self ref NetworkCoordinator, request: string): string
{
	S();
	{
		tried: list of ref DisNode;
		errs: string;
		for(i := 0; i < 2 * len nc.nodes + 1; i++){
			node := nc.balance();
			if(node == nil)
				break;
			if(member(node, tried))
				continue;
			tried = node :: tried;
			(reply, err) := noderequest(node, request);
			if(err == nil)
				return reply;
			if(errs != nil)
				errs += "; ";
			errs += err;
		}
		if(errs == nil)
			sys->werrstr(sys->sprint("no node to dispatch to: %r"));
		else
			sys->werrstr("all nodes failed: " + errs);
	} exception e {
	"*" =>
		sys->werrstr("llamacpp: " + e);
	}
	return nil;
}

member(node: ref DisNode, l: list of ref DisNode): int
{
	for(; l != nil; l = tl l)
		if(hd l == node)
			return 1;
	return 0;
}

#
# The files
#

# Write one ctl request; nil or the server's error.
writectl(mnt: string, cmd: string): string
{
	fd := sys->open(mnt + "/ctl", Sys->OWRITE);
	if(fd == nil)
		return sys->sprint("can't open %s/ctl: %r", mnt);
	b := array of byte cmd;
	if(sys->write(fd, b, len b) != len b)
		return sys->sprint("%r");
	return nil;
}

# Send a prompt through mnt/data and read the whole reply.
talk(mnt: string, input: string): (string, string)
{
	fd := sys->open(mnt + "/data", Sys->ORDWR);
	if(fd == nil)
		return (nil, sys->sprint("can't open %s/data: %r", mnt));
	return sendread(fd, input);
}

# One turn of a session of its own (clone, N/data, N/status, close), to
# learn why the reply ended: (reply, reason, error).
converse(mnt: string, input: string): (string, string, string)
{
	ctl := sys->open(mnt + "/clone", Sys->ORDWR);
	if(ctl == nil)
		return (nil, nil, sys->sprint("can't open %s/clone: %r", mnt));
	buf := array[32] of byte;
	n := sys->read(ctl, buf, len buf);
	if(n <= 0)
		return (nil, nil, sys->sprint("can't read %s/clone: %r", mnt));
	dir := mnt + "/" + string buf[0:n];
	if(dir[len dir - 1] == '\n')
		dir = dir[0:len dir - 1];
	fd := sys->open(dir + "/data", Sys->ORDWR);
	if(fd == nil)
		return (nil, nil, sys->sprint("can't open %s/data: %r", dir));
	(reply, err) := sendread(fd, input);
	reason: string;
	sfd := sys->open(dir + "/status", Sys->OREAD);
	if(sfd != nil){
		(b, nil) := readall(sfd);
		(nil, f) := sys->tokenize(string b, " \n");
		for(; f != nil; f = tl f)
			if(len hd f > 7 && (hd f)[0:7] == "reason=")
				reason = (hd f)[7:];
	}
	fd = nil;	# its files closed before the session is
	sfd = nil;
	sys->fprint(ctl, "close");
	return (reply, reason, err);
}

# Write input to an open data file, then read the whole reply from it.
sendread(fd: ref Sys->FD, input: string): (string, string)
{
	b := array of byte input;
	if(len b > 0 && sys->write(fd, b, len b) != len b)
		return (nil, sys->sprint("%r"));
	(reply, r) := readall(fd);
	if(r < 0)
		return (nil, sys->sprint("%r"));
	return (string reply, nil);
}

# A word as Plan 9's tokenize/parsecmd reads it.
quote(s: string): string
{
	if(s == nil)
		return "''";
	for(i := 0; i < len s; i++)
		case s[i] {
		' ' or '\t' or '\n' or '\r' or '\'' =>
			q := "'";
			for(j := 0; j < len s; j++){
				if(s[j] == '\'')
					q += "'";
				q[len q] = s[j];
			}
			return q + "'";
		}
	return s;
}
