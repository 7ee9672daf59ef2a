implement Llama;

#
# llama [-m mountpoint] [-a tcp!host!port [-k secretfile] [-M modulepath]]
#	[-c model] [-t temperature] [-n maxtokens] [-s system] [-g grammarfile] [-r] [prompt ...]
#
# Ask a llamafs node or coordinator: a session of its own (clone), the
# settings written to its ctl, the prompt (the arguments, or else standard
# input) written to its data file, and the reply copied to standard output
# as it arrives.  -c chooses one of a deployment's models (ctl `model`).  -s gives a chat its system prompt; -g a GBNF grammar
# (a file, copied to N/grammar) the reply follows; -r asks for raw
# completion where the model has a chat template.  A reply cut short
# (maxtokens, or a full context) is said on standard error.  The session is
# closed at the end.  With -a, -k
# authenticates with the secret in secretfile (to a server started with
# --auth-secret-file) through Llamacpp's authmount: the module from -M,
# else Llamacpp->PATH, else llamacpp.dis beside this command.
#

include "sys.m";
	sys: Sys;
include "draw.m";
include "arg.m";
include "llamacpp.m";

Llama: module
{
	init: fn(nil: ref Draw->Context, argv: list of string);
};

Cs: module
{
	PATH: con "/dis/ndb/cs.dis";
	init: fn(nil: ref Draw->Context, nil: list of string);
};

stderr: ref Sys->FD;

init(nil: ref Draw->Context, argv: list of string)
{
	sys = load Sys Sys->PATH;
	stderr = sys->fildes(2);
	arg := load Arg Arg->PATH;
	if(arg == nil)
		fail(sys->sprint("can't load %s: %r", Arg->PATH));
	arg->init(argv);
	arg->setusage("llama [-m mountpoint] [-a tcp!host!port [-k secretfile] [-M modulepath]] [-c model] [-t temperature] [-n maxtokens] [-s system] [-g grammarfile] [-r] [prompt ...]");
	mnt := "";
	addr := "";
	secretfile := "";
	modpath := "";
	grammarfile := "";
	argv0 := hd argv;
	settings: list of string;
	while((c := arg->opt()) != 0)
		case c {
		'm' =>
			mnt = arg->earg();
		'a' =>
			addr = arg->earg();
		'k' =>
			secretfile = arg->earg();
		'M' =>
			modpath = arg->earg();
		't' =>
			settings = "temperature " + number(arg->earg(), "temperature") :: settings;
		'n' =>
			settings = "maxtokens " + number(arg->earg(), "maxtokens") :: settings;
		's' =>
			settings = "system " + arg->earg() :: settings;
		'g' =>
			grammarfile = arg->earg();
		'r' =>
			settings = "mode raw" :: settings;
		'c' =>
			settings = "model " + arg->earg() :: settings;
		* =>
			arg->usage();
		}
	argv = arg->argv();
	if(secretfile != nil && addr == nil)
		fail("-k needs -a");
	arg = nil;

	if(addr != nil){
		# Mount the server in a namespace of our own.
		sys->pctl(Sys->FORKNS, nil);
		if(mnt == nil)
			mnt = "/n";
		if(!numeric(addr) && sys->stat("/net/cs").t0 < 0)
			startcs();
		(ok, conn) := sys->dial(addr, nil);
		if(ok < 0)
			fail(sys->sprint("can't dial %s: %r", addr));
		if(secretfile == nil){
			if(sys->mount(conn.dfd, nil, mnt, Sys->MREPL, nil) < 0)
				fail(sys->sprint("can't mount %s on %s: %r", addr, mnt));
		}else{
			llamacpp := loadllamacpp(modpath, argv0);
			secret := llamacpp->readsecret(secretfile);
			if(secret == nil)
				fail(sys->sprint("%r"));
			if(llamacpp->authmount(conn.dfd, secret, mnt, Sys->MREPL, nil) < 0)
				fail(sys->sprint("can't mount %s on %s: %r", addr, mnt));
		}
	}else if(mnt == nil)
		mnt = "/n/llama";

	prompt: array of byte;
	if(argv != nil){
		s := hd argv;
		for(argv = tl argv; argv != nil; argv = tl argv)
			s += " " + hd argv;
		prompt = array of byte s;
	}else
		prompt = readall(sys->fildes(0));
	if(len prompt == 0)
		fail("no prompt: give one as arguments or on standard input");

	ctl := sys->open(mnt + "/clone", Sys->ORDWR);
	if(ctl == nil)
		fail(sys->sprint("can't open %s/clone: %r", mnt));
	buf := array[64] of byte;
	n := sys->read(ctl, buf, len buf);
	if(n <= 0)
		fail(sys->sprint("can't read %s/clone: %r", mnt));
	(nil, f) := sys->tokenize(string buf[0:n], " \t\n");
	if(f == nil)
		fail("no session number from " + mnt + "/clone");
	session := mnt + "/" + hd f;
	for(settings = reverse(settings); settings != nil; settings = tl settings)
		if(sys->fprint(ctl, "%s", hd settings) < 0)
			fail(sys->sprint("%s: %r", hd settings));
	if(grammarfile != nil)
		putgrammar(grammarfile, session);

	err := stream(session + "/data", prompt);
	if(err == nil)
		saycut(session + "/status");
	sys->fprint(ctl, "close");
	if(err != nil)
		fail(err);
}

# -g: the grammar, written whole to N/grammar.  Its clunk says whether the
# server took it, but a clunk's error does not reach a Limbo program: reading
# it back does.
putgrammar(file: string, session: string)
{
	in := sys->open(file, Sys->OREAD);
	if(in == nil)
		fail(sys->sprint("can't open %s: %r", file));
	text := readall(in);
	out := sys->open(session + "/grammar", Sys->OWRITE|Sys->OTRUNC);
	if(out == nil || sys->write(out, text, len text) != len text)
		fail(sys->sprint("can't write %s/grammar: %r", session));
	out = nil;
	back := sys->open(session + "/grammar", Sys->OREAD);
	if(back == nil || string readall(back) != string text)
		fail("bad grammar: " + file + " refused (llamafs ask --grammar says why)");
}

# Say on standard error when the reply was cut short: N/status's reason.
saycut(status: string)
{
	fd := sys->open(status, Sys->OREAD);
	if(fd == nil)
		return;
	buf := array[256] of byte;
	n := sys->read(fd, buf, len buf);
	if(n <= 0)
		return;
	for((nil, f) := sys->tokenize(string buf[0:n], " \t\n"); f != nil; f = tl f)
		if(hd f == "reason=length" || hd f == "reason=context")
			sys->fprint(sys->fildes(2), "llama: the reply was cut short (%s)\n", hd f);
}

# The module: from modpath if given, else its installed PATH, else
# llamacpp.dis in the directory this command was run from.
loadllamacpp(modpath: string, argv0: string): Llamacpp
{
	paths := Llamacpp->PATH :: nil;
	if(modpath != nil)
		paths = modpath :: nil;
	else{
		for(i := len argv0 - 1; i >= 0; i--)
			if(argv0[i] == '/'){
				paths = Llamacpp->PATH :: argv0[0:i+1] + "llamacpp.dis" :: nil;
				break;
			}
	}
	err := "";
	for(; paths != nil; paths = tl paths){
		m := load Llamacpp hd paths;
		if(m != nil){
			m->init();
			return m;
		}
		if(err != nil)
			err += "; ";
		err += sys->sprint("can't load %s: %r", hd paths);
	}
	fail(err);
	return nil;
}

# Send the prompt through a data file; copy the reply to stdout as it comes.
stream(data: string, prompt: array of byte): string
{
	fd := sys->open(data, Sys->ORDWR);
	if(fd == nil)
		return sys->sprint("can't open %s: %r", data);
	if(sys->write(fd, prompt, len prompt) != len prompt)
		return sys->sprint("can't write prompt: %r");
	stdout := sys->fildes(1);
	buf := array[Sys->ATOMICIO] of byte;
	for(;;){
		n := sys->read(fd, buf, len buf);
		if(n < 0)
			return sys->sprint("%r");
		if(n == 0)
			return nil;
		if(sys->write(stdout, buf, n) != n)
			return sys->sprint("write error: %r");
	}
}

readall(fd: ref Sys->FD): array of byte
{
	buf := array[Sys->ATOMICIO] of byte;
	all := array[0] of byte;
	nall := 0;
	for(;;){
		n := sys->read(fd, buf, len buf);
		if(n < 0)
			fail(sys->sprint("can't read standard input: %r"));
		if(n == 0)
			return all[0:nall];
		if(nall + n > len all){
			a := array[2 * (nall + n)] of byte;
			a[0:] = all[0:nall];
			all = a;
		}
		all[nall:] = buf[0:n];
		nall += n;
	}
}

number(s: string, what: string): string
{
	if(s == nil)
		fail("bad " + what + ": empty");
	for(i := 0; i < len s; i++)
		if(!(s[i] >= '0' && s[i] <= '9' || s[i] == '.' || s[i] == '-' && i == 0))
			fail("bad " + what + ": " + s);
	return s;
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

# Names need ndb/cs: start it (in our own namespace) when it isn't running.
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

reverse(l: list of string): list of string
{
	r: list of string;
	for(; l != nil; l = tl l)
		r = hd l :: r;
	return r;
}

fail(msg: string)
{
	sys->fprint(stderr, "llama: %s\n", msg);
	raise "fail:" + msg;
}
