# Builds limbo/*.dis with Inferno's mk and limbo:
#	ROOT=/path/to/inferno; PATH=$ROOT/Linux/386/bin:$PATH
#	mk			# limbo/llamacpp.dis limbo/llama.dis limbo/isolate.dis
#				# and limbo/testdriver.dis (the Limbo tests' driver)
#	mk install		# llamacpp.dis (and isolate.dis) to $ROOT$MODULEPATH's
#				# directory, llama.dis to $ROOT/dis
#	mk clean
# MODULEPATH is the deployment config's modulePath (default
# /dis/deployment/llamacpp.dis): mk install MODULEPATH=/dis/x/llamacpp.dis,
# or mk install CONFIG=deployment.json to take it from a config file.

<$ROOT/mkconfig

TARG=\
	limbo/llamacpp.dis\
	limbo/llama.dis\
	limbo/isolate.dis\
	limbo/testdriver.dis\

MODULES=\
	limbo/llamacpp.m\

SYSMODULES=\
	arg.m\
	draw.m\
	sys.m\

DISBIN=$ROOT/dis
MODULEPATH=/dis/deployment/llamacpp.dis
CONFIG=

<$ROOT/mkfiles/mkdis

LIMBOFLAGS=-I$MODDIR -Ilimbo

# The sources are in limbo/: the .dis goes beside its .b.
%.dis:	%.b
	limbo $LIMBOFLAGS -gw -o $target $stem.b

# mkdis's install is $DISBIN/limbo/*.dis: send each where it belongs instead
# (isolate.dis beside the module; the tests' driver nowhere).
$DISBIN/%.dis:V:	%.dis
	modpath=$MODULEPATH
	if [ -n "$CONFIG" ]; then
		p=`sed -n 's/.*"modulePath"[ 	]*:[ 	]*"\([^"]*\)".*/\1/p' "$CONFIG" | sed 1q`
		if [ -n "$p" ]; then modpath=$p; fi
	fi
	case $stem in
	limbo/testdriver)	exit 0 ;;
	limbo/llamacpp)	dest=$ROOT$modpath ;;
	limbo/isolate)	dest=`dirname $ROOT$modpath`/isolate.dis ;;
	*)	dest=$DISBIN/`basename $stem`.dis ;;
	esac
	mkdir -p `dirname $dest`
	rm -f $dest && cp $stem.dis $dest && echo $stem.dis '->' $dest

clean:V:
	rm -f limbo/*.dis limbo/*.sbl

nuke:V:	clean
