implement Driver;

# The Limbo tests' driver (tests/limbo_driver.py): testdriver.dis MODULE.dis
# COMMAND... runs each command against the module's ADTs (load, eval, nodes,
# requests, coordinators...) and prints "=== COMMAND" and then what it gave,
# and "=== end" at the end.

include "sys.m";
	sys: Sys;
include "draw.m";
include "llamacpp.m";
	llamacpp: Llamacpp;
	ModelContext, DisNode, NetworkCoordinator: import llamacpp;

Driver: module
{
	init: fn(nil: ref Draw->Context, argv: list of string);
};

Command: module
{
	init: fn(nil: ref Draw->Context, argv: list of string);
};

init(nil: ref Draw->Context, argv: list of string)
{
	sys = load Sys Sys->PATH;
	llamacpp = load Llamacpp hd tl argv;
	if(llamacpp == nil){
		sys->fprint(sys->fildes(2), "can't load %s: %r\n", hd tl argv);
		raise "fail:load";
	}
	llamacpp->init();
	mc: ref ModelContext;
	nodes: list of ref DisNode;
	ncs: list of (string, ref NetworkCoordinator);
	for(argv = tl tl argv; argv != nil; argv = tl argv){
		(nil, f) := sys->tokenize(hd argv, " ");
		sys->print("=== %s\n", hd argv);
		sys->werrstr("");
		case hd f {
		"load" =>
			m := ModelContext.loadmodel(hd tl f, int hd tl tl f, int hd tl tl tl f);
			if(m == nil)
				sys->print("nil: %r\n");
			else{
				mc = m;
				sys->print("ok %s %d %d\n", m.path, m.ctxsize, m.layers);
			}
		"eval" =>
			result(mc.evaluate(rest(tl f)));
		"reason" =>
			sys->print("%s\n", mc.reason);
		"unload" =>
			mc.unload();
			sys->print("done %r\n");
		"node" =>
			nodes = DisNode.init(hd tl f, hd tl tl f, int hd tl tl tl f) :: nodes;
			sys->print("ok\n");
		"connect" =>
			r := find(nodes, hd tl f).connect();
			sys->print("%d %r\n", r);
		"send" =>
			result(find(nodes, hd tl f).sendRequest(rest(tl tl f)));
		"disconnect" =>
			find(nodes, hd tl f).disconnect();
			sys->print("done\n");
		"secret" =>	# secret NODE FILE: the node authenticates with it
			n := find(nodes, hd tl f);
			n.secret = llamacpp->readsecret(hd tl tl f);
			if(n.secret == nil)
				sys->print("nil: %r\n");
			else
				sys->print("ok %d\n", len n.secret);
		"model" =>	# model NODE NAME: its requests name the model
			find(nodes, hd tl f).model = hd tl tl f;
			sys->print("ok\n");
		"state" =>
			n := find(nodes, hd tl f);
			sys->print("connected %d failed %d\n", n.connected, n.failed);
		"nc" =>
			ncs = (hd tl f, NetworkCoordinator.init()) :: ncs;
			sys->print("ok\n");
		"add" =>
			findnc(ncs, hd tl f).addNode(find(nodes, hd tl tl f));
			sys->print("done\n");
		"remove" =>
			findnc(ncs, hd tl f).removeNode(hd tl tl f);
			sys->print("done %r\n");
		"balance" =>
			n := findnc(ncs, hd tl f).balance();
			if(n == nil)
				sys->print("nil: %r\n");
			else
				sys->print("%s\n", n.id);
		"dispatch" =>
			result(findnc(ncs, hd tl f).dispatch(rest(tl tl f)));
		"pdispatch" =>	# pdispatch NC K TEXT: K dispatches at once
			nc := findnc(ncs, hd tl f);
			k := int hd tl tl f;
			rc := chan of string;
			for(i := 0; i < k; i++)
				spawn pdispatch(nc, rest(tl tl tl f), rc);
			for(i = 0; i < k; i++)
				sys->print("%s\n", <-rc);
		"stat" =>
			if(sys->stat(hd tl f).t0 < 0)
				sys->print("absent\n");
			else
				sys->print("present\n");
		"os" =>
			os := load Command "/dis/os.dis";
			os->init(nil, f);
			sys->print("done\n");
		* =>
			sys->print("unknown command\n");
		}
	}
	sys->print("=== end\n");
}

pdispatch(nc: ref NetworkCoordinator, text: string, rc: chan of string)
{
	r := nc.dispatch(text);
	if(r == nil)
		r = sys->sprint("nil: %r");
	rc <-= r;
}

result(r: string)
{
	if(r == nil)
		sys->print("nil: %r\n");
	else
		sys->print("%s\n", r);
}

rest(f: list of string): string
{
	s := "";
	for(; f != nil; f = tl f){
		if(s != "")
			s += " ";
		s += hd f;
	}
	return s;
}

find(l: list of ref DisNode, id: string): ref DisNode
{
	for(; l != nil; l = tl l)
		if((hd l).id == id)
			return hd l;
	return nil;
}

findnc(l: list of (string, ref NetworkCoordinator), name: string): ref NetworkCoordinator
{
	for(; l != nil; l = tl l)
		if((hd l).t0 == name)
			return (hd l).t1;
	return nil;
}
